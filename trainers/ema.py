"""Exponential moving average of generator weights (the G_ema that samples and metrics use)."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

Generator = TypeVar("Generator")  # a module or its state dict


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema ← beta · ema + (1 − beta) · model for parameters; buffers (BatchNorm running
    statistics and its integer batch counter, which cannot be interpolated) are copied, as the
    StyleGAN2-ADA code does."""
    for ema_parameter, parameter in zip(ema.parameters(), model.parameters(), strict=True):
        ema_parameter.lerp_(parameter, 1.0 - beta)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def sampled_generator(generator: Generator, ema: Generator | None) -> Generator:
    """The generator users sample and metrics measure: G's EMA copy where the family keeps one
    (`ema`, None where it keeps none), else G itself."""
    return generator if ema is None else ema
