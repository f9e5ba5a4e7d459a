"""The driver: measures a list of registered names for one Evaluation (the training loop,
`ganforge evaluate` and the benchmarks all come here). Every rank returns the same dict, ready
for `mlflow.log_metrics`."""

from __future__ import annotations

import logging

from trainers import distributed
from trainers.metrics.collective import evaluation_group
from trainers.metrics.evaluation import Evaluation
from trainers.metrics.inception import InceptionWeightsUnavailable
from trainers.metrics.kinds import MetricUnavailable
from trainers.metrics.registry import get_metric

log = logging.getLogger(__name__)


def evaluate(names: list[str], evaluation: Evaluation) -> dict[str, float]:
    """Every named metric that can be measured here, merged into one dict. Inception metrics
    without the Inception weights are skipped with one warning that says how to supply them:
    a number from another network is never reported as FID."""
    results: dict[str, float] = {}
    if distributed.world_size() > 1:
        evaluation_group()  # every rank is here: the one point the group can be made
    discriminator = evaluation.discriminator
    mode = discriminator.training if discriminator is not None else False
    if discriminator is not None:  # the sampler runs G in eval mode itself
        discriminator.eval()
    try:
        for metric in map(get_metric, names):
            try:
                results.update(metric.compute(evaluation))
            except InceptionWeightsUnavailable as error:
                inception = [n for n in names if get_metric(n).needs_inception]
                _warn_once(f"{', '.join(inception)} skipped: {error}")
            except MetricUnavailable as error:
                _warn_once(f"{metric.name} skipped: {error}")
    finally:
        if discriminator is not None:
            discriminator.train(mode)
    return results


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
