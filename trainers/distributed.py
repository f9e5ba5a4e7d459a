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


def gather_strings(value: str) -> list[str]:
    """Every rank's `value`, in rank order (one all-gather; a list of one without a group)."""
    if world_size() == 1:
        return [value]
    found: list[str | None] = [None] * world_size()
    dist.all_gather_object(found, value)
    return [str(item) for item in found]


def average_gradients(module: nn.Module) -> torch.Tensor:
    """Average the gradients of `module` over ranks in place; return whether all are finite
    (a 0-dim bool tensor, equal on every rank because it is computed after the average)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    if world_size() == 1:  # one fused norm, no flat copy (WGAN-GP's D: 0.35 -> 0.07 ms);
        # finite when every gradient is, short of |g| ~1e19 where the step is lost anyway
        return torch.isfinite(nn.utils.get_total_norm(grads))
    flat = torch.cat([g.reshape(-1) for g in grads])
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


class _SumOverRanks(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of a sum over ranks is the sum of the
    ranks' gradients. torch.distributed.nn's version is deprecated for a private API."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all ranks, so a split
    batch normalizes as one worker's full batch would (nn.SyncBatchNorm does this on GPUs
    only; this is the gloo/CPU equivalent). One differentiable all-reduce per call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        channels, dims = x.shape[1], (0, 2, 3)
        count = torch.full((1,), x.numel() // channels, dtype=x.dtype, device=x.device)
        total = _SumOverRanks.apply(torch.cat([x.sum(dims), x.square().sum(dims), count]))
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean.square()).clamp_min(0.0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            # momentum None: a cumulative average, as nn.BatchNorm2d
            momentum = self.momentum
            if momentum is None:
                momentum = 1.0 / self.num_batches_tracked.item()
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
        shape = (1, channels, 1, 1)
        normalized = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return normalized * self.weight.view(shape) + self.bias.view(shape)


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers of `module` normalize over the global batch when several ranks train:
    nn.SyncBatchNorm on GPU, CrossRankBatchNorm2d otherwise. One rank: unchanged."""
    if world_size() == 1:
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = CrossRankBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine
            )
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            sync_batch_norm(child, device)
    return module
