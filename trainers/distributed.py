"""Data-parallel gradient and metric averaging over the process group Ray Train set up.

GAN phases run several forwards (real, fake, interpolates) and a double backward (the
gradient penalty) per optimizer step, which DistributedDataParallel's one-forward-one-backward
hooks do not model; so, as StyleGAN3 does, each phase's gradients are averaged explicitly
with one all-reduce of a flat buffer. The update equals DDP's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere, so every replica starts identical."""
    if world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(module: nn.Module) -> torch.Tensor:
    """Average the gradients of `module` over ranks in place; return whether all are finite
    (a 0-dim bool tensor, equal on every rank because it is computed after the average)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    if world_size() > 1:
        flat.div_(world_size())
        dist.all_reduce(flat)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
    return torch.isfinite(flat).all()


def average_metrics(metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank-averaged scalar metrics (one all-reduce); keys are equal on every rank."""
    if world_size() == 1 or not metrics:
        return metrics
    names = sorted(metrics)
    stacked = torch.stack([metrics[name].detach().float() for name in names])
    dist.all_reduce(stacked)
    stacked /= world_size()
    return dict(zip(names, stacked.unbind(), strict=True))
