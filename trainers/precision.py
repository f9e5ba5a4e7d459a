"""The one autocast context: training steps, auto_batch's trial steps and sampling run their
networks' forward passes through it."""

from __future__ import annotations

import torch


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype forward passes run in under a config's `precision`; None is float32."""
    return torch.bfloat16 if precision == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Forward passes on `device` in `dtype` (bf16 under `precision: bf16`); float32 when it is
    None, as for a computation that must stay in full precision."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
