from __future__ import annotations

import pytest
import torch

from storage.errors import InputError
from workers.device import configure_threads, resolve_device
from workers.margins import margins_from_logits


def test_margin_is_correct_logit_minus_best_other() -> None:
    logits = torch.tensor([[[3.0, 1.0, 2.0], [0.0, 5.0, 4.5]], [[1.0, 1.0, 0.0], [2.0, -1.0, 7.0]]])
    labels = torch.tensor([0, 2])
    margins = margins_from_logits(logits, labels)
    assert margins.shape == (2, 2) and margins.dtype == torch.float32
    assert torch.allclose(margins, torch.tensor([[1.0, -0.5], [0.0, 5.0]]))


def test_margins_of_bf16_logits_are_float32() -> None:
    logits = torch.randn(3, 5, 4).to(torch.bfloat16)
    assert margins_from_logits(logits, torch.zeros(5, dtype=torch.long)).dtype == torch.float32


def test_device_and_threads() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device().type in {"cpu", "cuda"}
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    before = torch.get_num_threads()
    try:
        assert configure_threads(1.7) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("device", ["nonsense", "tpu", ""])
def test_resolve_device_refuses_what_torch_cannot_read(device: str) -> None:
    with pytest.raises(InputError, match="device") as err:
        resolve_device(device)
    assert err.value.params == ("device",)


def test_resolve_device_refuses_cuda_without_cuda() -> None:
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(InputError, match="CUDA is not available") as err:
        resolve_device("cuda:0")
    assert err.value.params == ("device",)
