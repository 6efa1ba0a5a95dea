from __future__ import annotations

import torch

from workers.device import configure_threads, pick_device
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
    assert pick_device("cpu") == "cpu"
    assert pick_device() in {"cpu", "cuda"}
    before = torch.get_num_threads()
    try:
        assert configure_threads(1.7) == 1
    finally:
        torch.set_num_threads(before)
