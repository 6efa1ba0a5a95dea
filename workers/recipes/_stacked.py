"""Shared machinery of the built-in recipes that train a stack of K models.

A subclass supplies its data (:meth:`StackedRecipe.load_arrays`), its network
(:meth:`StackedRecipe.build_stack`) and its training settings; this base class
does the rest the same way for every such recipe: the device's fast paths
(:func:`workers.batched.configure_backend`), data resident on the device (bf16
on CUDA, channels-last for images), one stack per block size built once and
reused block after block (compiled once where ``torch.compile`` pays),
per-model generators, automatic splitting of blocks that do not fit, and
margins and logits from a float32 head.
"""

from __future__ import annotations

import gc
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from storage.errors import BlockFailedError
from workers.batched import (
    PLAIN_VIEW,
    ActivationBudget,
    Augmentation,
    CompileSetting,
    CpuPrecision,
    ParamGroup,
    TestView,
    TrainConfig,
    configure_backend,
    fit_stack,
    init_stack,
    model_generators,
    predict_logits,
    run_in_parts,
    subset_positions,
    training_dtype,
    use_compile,
)
from workers.batched.train import Forward
from workers.margins import margins_from_logits
from workers.recipe import Recipe, RecipeParams, TrainingBlock

__all__ = ["StackedParams", "SmallModelParams", "ArrayDataset", "StackedRecipe", "PartTimings"]


class StackedParams(RecipeParams):
    """Parameters every stacked recipe accepts (subclasses change the defaults)."""

    epochs: int = Field(10, ge=1, description="passes over each model's subset")
    batch_size: int = Field(64, ge=1, description="examples per step, per model")
    lr: float = Field(0.01, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient by the optimiser")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    models_per_pass: int | None = Field(
        None,
        ge=1,
        description="train at most this many models at once (None: the whole block, or on the CPU the recipe's "
        "cache-friendly part size; halved on OOM)",
    )
    eval_batch_size: int = Field(
        1000, ge=1, description="examples per forward pass when computing outputs (on the CPU, shared by the models)"
    )
    torch_compile: CompileSetting = Field(
        "auto", description="run the stack through torch.compile: auto (on CUDA where it pays), on, off"
    )
    cpu_precision: CpuPrecision = Field(
        "auto",
        description="CPU arithmetic: float32, bfloat16 (autocast), or auto (bfloat16 on CPUs with AMX for the "
        "recipes where it was measured to pay, float32 elsewhere); CUDA always trains under bf16 autocast",
    )
    max_activation_mib: float | None = Field(
        None, gt=0, description="split a block whose training step saves more than this for backward (MiB)"
    )

    @model_validator(mode="after")
    def _budget_needs_eager(self) -> StackedParams:
        if self.max_activation_mib is not None and self.torch_compile == "on":
            raise ValueError("max_activation_mib counts eager autograd only: use torch_compile 'auto' or 'off'")
        return self

    def train_config(self, **recipe_specific: object) -> TrainConfig:
        """The trainer's settings from the shared fields, plus what the recipe fixes or adds."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                           **recipe_specific)  # type: ignore[arg-type]


class SmallModelParams(StackedParams):
    """What the small built-in models (``mnist1d-cnn``, ``digits-mlp``) add: Adam or SGD, small batches."""

    epochs: int = Field(20, ge=1, description="passes over each model's subset")
    batch_size: int = Field(32, ge=1, description="examples per step, per model")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam, or sgd with Nesterov momentum 0.9")

    def train_config(self, **recipe_specific: object) -> TrainConfig:
        return super().train_config(optimizer=self.optimizer, warmup_fraction=0.1, **recipe_specific)


@dataclass(frozen=True)
class ArrayDataset:
    """A classification dataset as arrays: ``x`` [N, C, *S] float32, ``y`` int64 [N].

    Images may instead come as uint8 with per-channel ``mean`` and ``std`` (of
    the pixels scaled to [0, 1]): they are then normalised on the device at
    setup, chunk by chunk, so the host never holds a float32 copy.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    mean: np.ndarray | None = None
    std: np.ndarray | None = None


@dataclass
class PartTimings:
    """Seconds spent per phase, summed over a block's parts (device work included)."""

    prepare: float = 0.0
    train: float = 0.0
    evaluate: float = 0.0
    models: int = 0


class StackedRecipe(Recipe):
    """A recipe that trains K copies of one network with stacked parameters."""

    supported_outputs = frozenset({"margins/test", "margins/train", "logits/test"})
    #: Inputs are images [N, C, H, W] kept and fed channels-last.
    channels_last: ClassVar[bool] = False
    #: ``torch_compile="auto"`` compiles this network on CUDA.
    compile_pays_on_cuda: ClassVar[bool] = False
    #: ``cpu_precision="auto"`` trains this network under bf16 autocast on CPUs with AMX.
    bf16_pays_on_amx: ClassVar[bool] = False
    #: On the CPU, blocks train in parts of at most this many models unless
    #: ``models_per_pass`` says otherwise (None: whole blocks). Past some size a
    #: step's activations fall out of the core's cache and every model costs more.
    cpu_models_per_pass: ClassVar[int | None] = None

    def __init__(self, params: RecipeParams) -> None:
        super().__init__(params)
        self._device: torch.device | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        # The largest number of models that fit in memory at once, learnt from
        # out-of-memory retries so later blocks do not pay for them again.
        self._part_limit: int | None = None
        self._compile = False
        self._dtype = torch.float32  # the autocast dtype of training and prediction (training_dtype)
        # One stack (and its compiled form) for the last part size: rebuilt
        # only when the size changes, so compilation is paid once per size.
        self._cached: tuple[int, nn.Module, Forward] | None = None
        self.last_timings = PartTimings()

    @abstractmethod
    def load_arrays(self) -> ArrayDataset:
        """The dataset as numpy arrays (called once per worker by :meth:`setup`)."""

    @abstractmethod
    def build_stack(self, num_models: int) -> nn.Module:
        """The network for ``num_models`` models on the CPU, uninitialised."""

    def train_config(self) -> TrainConfig:
        """The training hyper-parameters (by default, from the params' shared fields)."""
        return self.params.train_config()  # type: ignore[attr-defined]

    def augmentation(self) -> Augmentation | None:
        """Per-model random augmentation of training batches (default: none)."""
        return None

    def param_groups(self, stack: nn.Module) -> Sequence[ParamGroup]:
        """Parameters with their own learning-rate scale or decay (default: none)."""
        return ()

    def test_views(self) -> tuple[TestView, ...]:
        """Test-time views whose logits are averaged (default: the plain input)."""
        return PLAIN_VIEW

    def prepare_stack(self, stack: nn.Module, *, x_train: torch.Tensor, positions: torch.Tensor) -> None:
        """Set what depends on model ``k``'s data ``x_train[positions[k]]``, after the random init (default: nothing)."""

    def setup(self, device: str) -> None:
        self._device = torch.device(device)
        configure_backend(self._device)
        p = self.params
        # The activation budget counts what eager autograd saves: with one, "auto" stays eager.
        budgeted = getattr(p, "max_activation_mib", None) is not None
        setting = getattr(p, "torch_compile", "off")
        self._compile = use_compile("off" if budgeted and setting == "auto" else setting, self._device,
                                    pays_on_cuda=self.compile_pays_on_cuda)
        self._dtype = training_dtype(self._device, getattr(p, "cpu_precision", "float32"),
                                     bf16_pays_on_amx=self.bf16_pays_on_amx)
        data = self.load_arrays()
        # bf16 on CUDA: autocast casts inputs to bf16 anyway, so this halves the
        # memory and the gathers for nothing lost. Images are kept channels-last.
        dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32

        def resident(x: np.ndarray) -> torch.Tensor:
            if x.dtype == np.uint8 and data.mean is not None and data.std is not None:
                tensor = _normalised_on(self._device, x, data.mean, data.std, dtype)
            else:
                tensor = torch.as_tensor(x).to(self._device, dtype)
            return tensor.contiguous(memory_format=torch.channels_last) if self._is_image(tensor) else tensor

        self._tensors = {
            "x_train": resident(data.x_train),
            "y_train": torch.as_tensor(data.y_train, dtype=torch.int64).to(self._device),
            "x_test": resident(data.x_test),
            "y_test": torch.as_tensor(data.y_test, dtype=torch.int64).to(self._device),
        }

    def _is_image(self, tensor: torch.Tensor) -> bool:
        return self.channels_last and tensor.dim() == 4

    def train_block(self, block: TrainingBlock) -> dict[str, np.ndarray]:
        if self._device is None:
            raise BlockFailedError(f"block {block.block_id}: recipe {self.name!r} used before setup()")
        unknown = set(block.outputs) - self.supported_outputs
        if unknown:
            raise BlockFailedError(f"block {block.block_id}: recipe {self.name!r} cannot produce {sorted(unknown)}")
        masks = np.asarray(block.masks, dtype=bool)
        seeds = np.asarray(block.seeds, dtype=np.int64)
        n_train = self._tensors["x_train"].shape[0]
        if masks.ndim != 2 or masks.shape[1] != n_train or masks.shape[0] != seeds.shape[0]:
            raise BlockFailedError(
                f"block {block.block_id}: masks {masks.shape} and seeds {seeds.shape} do not fit "
                f"{n_train} training examples"
            )
        device = self._device
        per_pass = getattr(self.params, "models_per_pass", None)
        if per_pass is None and device.type == "cpu":
            per_pass = self.cpu_models_per_pass
        limits = [v for v in (per_pass, self._part_limit) if v is not None]
        self.last_timings = PartTimings()
        # Models train together only when their subsets have the same size (equal
        # step counts). Generated masks always do; explicit masks files may not,
        # so such blocks train one group of equal sizes after another.
        sizes = masks.sum(axis=1)
        results: dict[str, np.ndarray] = {}
        for size in np.unique(sizes):
            rows = np.flatnonzero(sizes == size)
            part_results, part_size = run_in_parts(
                lambda part, rows=rows: self._train_part(
                    masks[rows[part]], seeds[rows[part]], block.outputs, device=device
                ),
                num_models=len(rows),
                max_models=min(limits) if limits else None,
            )
            if part_size < len(rows):
                self._part_limit = part_size
            for name, values in part_results.items():
                if name not in results:
                    results[name] = np.empty((masks.shape[0], *values.shape[1:]), dtype=values.dtype)
                results[name][rows] = values
        return results

    def _stack_for(self, num_models: int, device: torch.device) -> tuple[nn.Module, Forward]:
        """The stack for ``num_models`` models on ``device``, and what runs it."""
        if self._cached is not None and self._cached[0] == num_models:
            return self._cached[1], self._cached[2]
        self._cached = None  # free the old size's parameters before building the new one
        if device.type == "cuda":
            # A compiled stack holds reference cycles; collecting them lets the
            # caching allocator hand its memory to the new size. On the CPU the
            # old stack's tensors go with their last reference, and a full
            # collection (about 0.1 s in a worker) would be paid per change of size.
            gc.collect()
            torch.cuda.empty_cache()
        layout = torch.channels_last if self.channels_last else torch.preserve_format
        stack = self.build_stack(num_models).to(device, memory_format=layout)
        run: Forward = torch.compile(stack) if self._compile else stack  # type: ignore[assignment]
        self._cached = (num_models, stack, run)
        return stack, run

    def _train_part(
        self, masks: np.ndarray, seeds: np.ndarray, outputs: tuple[str, ...], *, device: torch.device
    ) -> dict[str, np.ndarray]:
        """Train the models of ``masks`` [k, N_train] / ``seeds`` [k] and compute ``outputs``."""
        clock = _DeviceClock(device)
        num_models = masks.shape[0]
        stack, run = self._stack_for(num_models, device)
        generators = model_generators(seeds)
        init_stack(stack, generators)
        positions = torch.as_tensor(subset_positions(masks)).to(device)
        self.prepare_stack(stack, x_train=self._tensors["x_train"], positions=positions)
        prepared = clock.now()
        t = self._tensors
        max_mib = getattr(self.params, "max_activation_mib", None)
        fit_stack(
            stack,
            x_train=t["x_train"],
            y_train=t["y_train"],
            positions=positions,
            generators=generators,
            config=self.train_config(),
            augmentation=self.augmentation(),
            groups=self.param_groups(stack),
            forward=run,
            channels_last=self.channels_last,
            budget=ActivationBudget(int(max_mib * 2**20)) if max_mib is not None else None,
            dtype=self._dtype,
        )
        trained = clock.now()
        result = self._evaluate(stack, run, num_models, outputs)
        timings = self.last_timings
        timings.prepare += prepared - clock.start
        timings.train += trained - prepared
        timings.evaluate += clock.now() - trained
        timings.models += num_models
        return result

    def _evaluate(
        self, stack: nn.Module, run: Forward, num_models: int, outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        t = self._tensors
        eval_batch = int(getattr(self.params, "eval_batch_size", 1000))
        if self._device is not None and self._device.type == "cpu":
            # A pass then holds one model's activations at eval_batch_size, whatever K:
            # 32 models at 1,000 examples each (80 MiB a layer) ran 2.4x slower per model.
            eval_batch = max(1, eval_batch // num_models)

        def logits_on(x: torch.Tensor) -> torch.Tensor:
            return predict_logits(stack, x, num_models=num_models, batch_size=eval_batch, views=self.test_views(),
                                  forward=run, channels_last=self._is_image(x), dtype=self._dtype)

        result: dict[str, np.ndarray] = {}
        test_logits = logits_on(t["x_test"])
        result["margins/test"] = margins_from_logits(test_logits, t["y_test"]).cpu().numpy().astype(np.float32)
        if "logits/test" in outputs:
            result["logits/test"] = test_logits.cpu().numpy().astype(np.float32)
        if "margins/train" in outputs:
            train_logits = logits_on(t["x_train"])
            result["margins/train"] = margins_from_logits(train_logits, t["y_train"]).cpu().numpy().astype(np.float32)
        return {name: result[name] for name in outputs}


def _normalised_on(
    device: torch.device, images: np.ndarray, mean: np.ndarray, std: np.ndarray, dtype: torch.dtype, chunk: int = 4096
) -> torch.Tensor:
    """uint8 images [N, C, *S] → ``(x / 255 - mean) / std`` on ``device`` in ``dtype``, a chunk at a time."""
    shape = (1, -1) + (1,) * (images.ndim - 2)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(shape)
    out = torch.empty(images.shape, dtype=dtype, device=device)
    for start in range(0, len(images), chunk):
        part = torch.as_tensor(images[start : start + chunk]).to(device).float()
        out[start : start + chunk] = ((part / 255.0 - m) / s).to(dtype)
    return out


class _DeviceClock:
    """Wall-clock seconds that include the device's queued work (synchronises CUDA before reading)."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.start = self.now()

    def now(self) -> float:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return time.perf_counter()
