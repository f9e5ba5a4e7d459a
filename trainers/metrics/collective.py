"""Evaluation's work over the ranks of the process group (when there is one): every rank
measures its own chunks, the chunks are gathered in chunk order on every rank, and a final
distance is computed once, by rank 0, and sent to the others. The collectives time out (a rank
left alone fails with EvaluationTimeout instead of hanging the run)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from trainers import distributed


class EvaluationTimeout(RuntimeError):
    """A rank waited longer than the evaluation timeout for the others (one failed, or they
    disagree on what to measure): the evaluation fails instead of hanging the run."""


# seconds a rank waits for the others at one of evaluation's collectives
EVALUATION_TIMEOUT_S = float(os.environ.get("GANFORGE_EVAL_TIMEOUT_S", "1800"))
_groups: dict[int, dist.ProcessGroup] = {}


def evaluation_group() -> dist.ProcessGroup:
    """A gloo group of every rank whose collectives time out after EVALUATION_TIMEOUT_S;
    created (a collective itself) when every rank enters its first evaluation."""
    world = id(dist.group.WORLD)
    if world not in _groups:
        timeout = timedelta(seconds=EVALUATION_TIMEOUT_S)
        _groups[world] = dist.new_group(backend="gloo", timeout=timeout)
    return _groups[world]


def _collective(what: str, call: Callable[[dist.ProcessGroup], object]) -> None:
    """`call(group)` on the evaluation group, so a rank left alone raises EvaluationTimeout
    rather than waiting for good. CPU objects only."""
    try:
        call(evaluation_group())
    except RuntimeError as error:
        if "timed out" not in str(error).lower():
            raise
        raise EvaluationTimeout(
            f"evaluation: rank {distributed.rank()} waited over {EVALUATION_TIMEOUT_S:.0f} s for "
            f"the other ranks to {what} (GANFORGE_EVAL_TIMEOUT_S); one of them failed or "
            "stopped evaluating"
        ) from None


def gather_chunks(parts) -> torch.Tensor:
    """Every rank's (chunk index, tensor) parts, joined in chunk order, on every rank (CPU).
    A rank with no chunk takes part all the same, with an empty list."""
    local = [(chunk, tensor.detach().cpu()) for chunk, tensor in parts]
    if distributed.world_size() > 1:
        every: list = [None] * distributed.world_size()
        _collective("gather", lambda group: dist.all_gather_object(every, local, group=group))
        local = [part for rank_parts in every for part in rank_parts]
    local.sort(key=lambda part: part[0])  # stable: the parts of a chunk keep their order
    return torch.cat([tensor for _, tensor in local])


def on_rank0(compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The final distance computed once, by rank 0, and sent to the others (every rank holds
    the gathered inputs; computing it on each would only add the same CPU work W times)."""
    if distributed.world_size() == 1:
        return compute()
    result = [compute() if distributed.rank() == 0 else None]
    _collective(
        "receive rank 0's result", lambda group: dist.broadcast_object_list(result, 0, group)
    )
    return result[0]
