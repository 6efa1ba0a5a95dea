"""``mnist1d-cnn``, the default recipe: a small 1-D CNN on MNIST-1D.

The data is generated locally by the ``mnist1d`` package (its
``make_dataset`` with the package's default arguments: 5,000 signals of length
40, 10 classes, seed 42, the first 4,000 for training and the last 1,000 for
test). Nothing is downloaded and nothing is cached on disk.

Network, per model (``w`` = ``width``)::

    conv(1→w, k=5, pad 2) ReLU              length 40
    conv(w→w, k=3, stride 2, pad 1) ReLU    length 20
    conv(w→w, k=3, stride 2, pad 1) ReLU    length 10
    flatten → linear(10·w → 10)

trained with Adam and a linear warmup then linear decay of the learning rate
(label smoothing optional). The defaults reach about 90% mean test accuracy at α=0.5.

The signals run as images of height 1 through 1×k convolutions, channels-last:
on the CPU oneDNN trains the grouped convolution that way two to three times
faster than as a 1-D NCL one (``bench/bench_training.py --probes``), which is
where most of batching's gain over one model at a time comes from.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from pydantic import Field
from torch import nn

from storage.layout import DatasetInfo
from workers.batched import FullPrecision, GroupedConv, GroupedLinear, to_grouped
from workers.recipes._stacked import ArrayDataset, SmallModelParams, StackedRecipe

__all__ = ["Mnist1dCnnParams", "Mnist1dCnn", "generate_mnist1d"]

#: Sizes of the standard MNIST-1D split.
_N_TRAIN, _N_TEST, _N_CLASSES, _LENGTH = 4000, 1000, 10, 40


class Mnist1dCnnParams(SmallModelParams):
    """Parameters of ``mnist1d-cnn``; the defaults give ≥80% test accuracy at α=0.5."""

    width: int = Field(32, ge=1, description="channels of every conv layer")
    lr: float = Field(0.01, gt=0, description="peak learning rate")
    n_train: int = Field(_N_TRAIN, ge=1, le=_N_TRAIN, description="use the first n_train training signals")
    n_test: int = Field(_N_TEST, ge=1, le=_N_TEST, description="use the first n_test test signals")


def generate_mnist1d() -> ArrayDataset:
    """The standard MNIST-1D split, generated in memory.

    ``mnist1d.data.make_dataset`` reseeds numpy's and Python's global random
    generators; their states are restored afterwards so that generating the
    data changes nothing else in the process.

    Returns
    -------
    ArrayDataset with ``x_*`` float32 [N, 1, 40] and ``y_*`` int64 [N].
    """
    from mnist1d.data import get_dataset_args, make_dataset

    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return ArrayDataset(
        x_train=np.asarray(data["x"], dtype=np.float32)[:, None, :],
        y_train=np.asarray(data["y"], dtype=np.int64),
        x_test=np.asarray(data["x_test"], dtype=np.float32)[:, None, :],
        y_test=np.asarray(data["y_test"], dtype=np.int64),
        n_classes=_N_CLASSES,
    )


class _ConvHead(GroupedLinear):
    """The linear head on the last convolution's features, taken in channels-last order.

    Model ``k`` draws its weight as a per-model network's head on the NCHW
    flatten would (input feature ``c*L + l`` is channel ``c`` at position
    ``l``) and stores it permuted to ``(l, c)``, the channels-last memory order
    in which the features arrive: the same function and the same initial
    values, with no re-indexing per step (the optimisers act elementwise).

    Shapes
    ------
    input ``[K, B, L*C]`` in ``(l, c)`` order → ``[K, B, out]``.
    """

    def __init__(self, num_models: int, channels: int, length: int, out_features: int) -> None:
        super().__init__(num_models, channels * length, out_features)
        self.channels, self.length = channels, length

    def init_model(self, k: int, generator: torch.Generator) -> None:
        super().init_model(k, generator)
        with torch.no_grad():
            drawn = self.weight[k].view(self.out_features, self.channels, self.length)
            self.weight[k].copy_(drawn.transpose(1, 2).reshape(self.out_features, -1))


class _Stack(nn.Module):
    """K copies of the 1-D CNN in the grouped layout: [B, K, 1, 40] → [B, K*10]."""

    def __init__(self, num_models: int, width: int) -> None:
        super().__init__()
        self.num_models, self.width = num_models, width
        # In-place ReLUs: a convolution's backward needs its input, not its output.
        self.features = nn.Sequential(
            GroupedConv(num_models, 1, width, (1, 5), padding=(0, 2)),
            nn.ReLU(inplace=True),
            GroupedConv(num_models, width, width, (1, 3), stride=(1, 2), padding=(0, 1)),
            nn.ReLU(inplace=True),
            GroupedConv(num_models, width, width, (1, 3), stride=(1, 2), padding=(0, 1)),
        )
        self.head = FullPrecision(_ConvHead(num_models, width, _LENGTH // 4, _N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # [B, K*w, 1, 10] channels-last: memory [B, 10, K, w]
        batch, length = h.shape[0], h.shape[-1]
        # One copy to per-model rows [K, B, 10*w] (whole channel runs read and
        # written), and the last ReLU on the copy: its backward then meets a
        # gradient in its own layout (on the grouped channels-last tensor it
        # met an NCHW one, a strided pass that took 9 % of a K=32 step).
        per_model = h.permute(0, 2, 3, 1).reshape(batch, length, self.num_models, self.width).permute(2, 0, 1, 3)
        features = torch.relu_(per_model.reshape(self.num_models, batch, length * self.width))
        return to_grouped(self.head(features))  # [K, B, 10] -> [B, K*10]


class Mnist1dCnn(StackedRecipe):
    """A small 1-D CNN on MNIST-1D, K models at once with grouped convolutions."""

    name = "mnist1d-cnn"
    Params = Mnist1dCnnParams
    params: Mnist1dCnnParams
    channels_last = True
    bf16_pays_on_amx = True
    # At the defaults a 64-model step costs ~13 % more per model than a 32-model
    # one on the CPU (docs/benchmarks.md), so bigger blocks train 32 at a time.
    cpu_models_per_pass = 32

    def dataset_info(self) -> DatasetInfo:
        # The sizes are fixed by the standard split; no need to generate the data.
        return DatasetInfo(
            name="mnist1d", n_train=self.params.n_train, n_test=self.params.n_test, n_classes=_N_CLASSES
        )

    def load_arrays(self) -> ArrayDataset:
        full = generate_mnist1d()
        p = self.params
        # [N, 1, 40] -> [N, 1, 1, 40]: signals as images of height 1.
        return ArrayDataset(
            x_train=full.x_train[: p.n_train, :, None, :],
            y_train=full.y_train[: p.n_train],
            x_test=full.x_test[: p.n_test, :, None, :],
            y_test=full.y_test[: p.n_test],
            n_classes=_N_CLASSES,
        )

    def build_stack(self, num_models: int) -> nn.Module:
        return _Stack(num_models, self.params.width)
