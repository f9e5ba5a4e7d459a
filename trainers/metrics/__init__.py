"""GAN metrics registered by name. The names are checked here, without importing torch, so
configs validate before anything heavy loads; the rest imports torch:

  registry.py    the name table: name -> Metric
  kinds.py       the metrics (fid, kid, swd, a family's own): how each one measures
  evaluation.py  what is measured: a generator against a dataset, read in fixed chunks
  collective.py  the work split over ranks: gathers in chunk order, rank 0 computes
  cache.py       real-image statistics cached per dataset version
  driver.py      evaluate(names, evaluation): every name that can be measured here
  inception.py, statistics.py, swd.py   the networks and the math
"""

from __future__ import annotations

import re
import sys

from pydantic import BaseModel, ConfigDict, field_validator

from trainers.data.format import check_resolution

NAME_PATTERN = re.compile(r"(fid|kid|swd)([1-9][0-9]*)k")  # N thousand generated images
# The score of a checkpoint no metric was measured at: last under Ray's "min" order. Finite,
# because Ray's checkpoint-manager snapshot is JSON, where infinity becomes null and a resumed
# run then fails comparing scores.
UNSCORED = sys.float_info.max


def names_help() -> str:
    """The registered names, for messages: the generic ones and every family's own."""
    from trainers.families import family_metric_names

    own = ", ".join(sorted(family_metric_names()))
    generic = "fid<N>k, kid<N>k, swd<N>k (N thousand generated images, e.g. fid50k)"
    return f"{generic}, or a family's own: {own}" if own else generic


def parse_metric_name(name: str) -> tuple[str, int]:
    """'fid50k' -> ('fid', 50), 'm_global' -> ('m_global', 0) (a family's own metric);
    ValueError listing the names."""
    from trainers.families import family_metric_names

    match = NAME_PATTERN.fullmatch(name)
    if match:
        return match[1], int(match[2])
    if name in family_metric_names():
        return name, 0
    raise ValueError(f"unknown metric {name!r}; registered: {names_help()}")


def check_metric_names(names: list[str]) -> list[str]:
    """A config's metric list: registered names, each once (pydantic field validators)."""
    for name in names:
        parse_metric_name(name)
    if len(set(names)) < len(names):
        raise ValueError(f"{names} lists a metric twice")
    return names


class RealStatisticsConfig(BaseModel):
    """The real_statistics stage (params.yaml section of the same name): the real side of the
    metrics, computed once per dataset version and cached beside the dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: str = "data/quickstart"  # dataset folder written by the build_dataset stage
    resolutions: list[int] = [32]  # the resolutions the training configs evaluate at
    metrics: list[str] = ["swd1k"]  # fid<N>k and kid<N>k share one cache: all real images

    @field_validator("metrics")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        return check_metric_names(names)

    @field_validator("resolutions")
    @classmethod
    def _in_the_pyramid(cls, resolutions: list[int]) -> list[int]:
        return [check_resolution(resolution) for resolution in resolutions]
