"""Metrics registered by name. A name fixes how its number is measured, as StyleGAN2-ADA's
`fid50k_full` does: `fid50k` is always 50,000 generated images against every real image of
the resolution, so two runs' `fid50k` compare. The names are checked, without torch, in
trainers.metrics; the kinds they stand for are in trainers.metrics.kinds.
"""

from __future__ import annotations

from collections.abc import Callable

from trainers.metrics import parse_metric_name
from trainers.metrics.kinds import (
    FamilyMetric,
    FrechetInceptionDistance,
    KernelInceptionDistance,
    Metric,
    SlicedWassersteinDistance,
)

_KINDS: dict[str, Callable[[int], Metric]] = {
    "fid": FrechetInceptionDistance,
    "kid": KernelInceptionDistance,
    "swd": SlicedWassersteinDistance,
}


def get_metric(name: str) -> Metric:
    """The metric a registered name stands for; ValueError listing the names otherwise."""
    kind, thousands = parse_metric_name(name)
    return _KINDS[kind](thousands) if kind in _KINDS else FamilyMetric(name)
