"""The training stage's typed config: one file per preset under configs/train/, validated here.

The `model:` section is the family's own config (trainers/families); this module holds what
every run has. Defaults are the official code's; each field says why in one line. Unknown
keys are errors (extra="forbid") so a typo never trains with a silently ignored setting.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from trainers.families import FAMILIES, Family, family_config_union, family_of
from trainers.families.base import Strict
from trainers.files import read_yaml, yaml_problem
from trainers.metrics import NAME_PATTERN, check_metric_names
from trainers.schedule import GrowthSchedule

ModelConfig = family_config_union()


class TrainConfig(Strict):
    """One training run: the family's model section plus schedule, batch and logging."""

    model: ModelConfig
    data: str = "data/quickstart"  # dataset folder written by `ganforge data build`
    seed: int = Field(default=0, ge=0)  # fixes init, latents, data order: reruns are equal
    workers: int = Field(default=1, ge=1)  # Ray Train workers, one rank each (one per GPU)
    # CPUs Ray reserves for each worker, and torch's threads in it (its intra-op pool)
    cpus_per_worker: int = Field(default=1, ge=1)
    # elastic: after a node is lost Ray Train may go on with as few as this many workers
    # (ScalingConfig(num_workers=(min_workers, workers))), the global batch unchanged;
    # None keeps the size fixed (a lost node then waits for its replacement)
    min_workers: int | None = Field(default=None, ge=1)
    total_kimg: float = Field(gt=0)  # training length in thousands of real images shown
    # Global batch per resolution (split evenly over workers); the official ProGAN table is
    # {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4}.
    batch_per_resolution: dict[int, int]
    # fp32 as every reference; bf16 autocasts the networks' forward passes (on GPU: tensor
    # cores) while the gradient penalty and BEGAN's reconstruction losses stay float32
    precision: Literal["fp32", "bf16"] = "fp32"
    # real images flipped left-right at random, half of each batch on average (the official
    # ProGAN CelebA-HQ config's mirror_augment); the flips come from the run's seeded RNG, the
    # same on any number of workers
    mirror_augment: bool = False
    auto_batch: bool = False  # GPU: largest power-of-two batch within the memory fraction
    auto_batch_memory_fraction: float = Field(default=0.8, gt=0, le=1)  # of device memory
    # decode processes per Ray Train worker (torch DataLoader workers; 0 decodes in the worker)
    loader_processes: int = Field(default=1, ge=0)
    shuffle_buffer: int = Field(default=1000, ge=1)  # samples mixed across shards
    log_every_kimg: float = Field(default=1.0, gt=0)  # metrics to MLflow and the bar
    sample_every_kimg: float = Field(default=10.0, gt=0)  # sample grid from fixed latents
    checkpoint_every_kimg: float = Field(default=50.0, gt=0)  # resume points
    checkpoints_to_keep: int = Field(default=2, ge=1)  # older ones are deleted by Ray
    sample_grid: int = Field(default=8, ge=1, le=32)  # the grid is sample_grid² images
    max_nonfinite_steps: int = Field(default=10, ge=1)  # consecutive skipped steps → stop
    # worker-group restarts from the latest checkpoint after a worker or node is lost (Ray's
    # FailureConfig); 0 fails on the first error, as a short local run should
    max_failures: int = Field(default=0, ge=0)
    experiment: str = "ganforge"  # MLflow experiment name
    # metrics by registered name (trainers/metrics: fid50k, kid50k, swd16k; a family's own,
    # e.g. BEGAN's m_global),
    # measured over all ranks every eval_every_kimg and at the end; the first one measured
    # (FID, say, or SWD listed next for when no Inception weights are at hand) ranks the
    # checkpoints: the best is kept and marked
    metrics: list[str] = []
    eval_every_kimg: float | None = Field(default=None, gt=0)  # None: at the end only

    @property
    def family(self) -> Family:
        """The family this run trains, built from the model section."""
        return family_of(self.model)

    @property
    def resolutions(self) -> list[int]:
        """Every resolution trained, in order."""
        return self.family.resolutions

    @model_validator(mode="after")
    def _batches_cover_resolutions(self) -> TrainConfig:
        for resolution in self.resolutions:
            if resolution not in self.batch_per_resolution:
                raise ValueError(
                    f"batch_per_resolution has no entry for resolution {resolution} "
                    f"(needs {self.resolutions})"
                )
        for resolution, batch in self.batch_per_resolution.items():
            if batch < 1:
                raise ValueError(f"batch_per_resolution[{resolution}] must be ≥ 1, got {batch}")
        own = self.family.metric_names
        for name in self.metrics:
            if not NAME_PATTERN.fullmatch(name) and name not in own:
                raise ValueError(
                    f"metrics: {name} is not a metric of {self.model.family} runs"
                    + (f" (its own: {', '.join(own)})" if own else "")
                )
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"min_workers {self.min_workers} is above workers {self.workers}")
        return self

    @field_validator("metrics")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        return check_metric_names(names)

    @property
    def world_sizes(self) -> range:
        """Every number of workers the run may train with (more than one when elastic)."""
        return range(self.min_workers or self.workers, self.workers + 1)

    def batch_per_worker(self, resolution: int, workers: int) -> int:
        """The global batch of `resolution` split over `workers`; a ValueError names both."""
        batch = self.batch_per_resolution[resolution]
        if batch % workers:
            raise ValueError(
                f"batch_per_resolution[{resolution}] = {batch} does not split over "
                f"{workers} workers; use a multiple of {workers}"
            )
        per_worker = batch // workers
        multiple = self.family.batch_multiple
        if per_worker % min(multiple, per_worker):
            raise ValueError(
                f"batch_per_resolution[{resolution}] = {batch} gives {per_worker} per worker, "
                f"not a multiple of {multiple} (the {self.model.family} nets' batch group)"
            )
        return per_worker

    @property
    def growth_schedule(self) -> GrowthSchedule:
        """Resolution and fade-in at any kimg (one stage for the fixed-resolution families)."""
        return self.family.growth_schedule


def _owner(root: type[BaseModel], location: list[str]) -> type[BaseModel]:
    """The config class that holds the key at `location` (a pydantic error's loc)."""
    owner = root
    for part in location[:-1]:
        field = owner.model_fields.get(part)
        if field is None:
            if part in FAMILIES:  # the tag pydantic inserts for a discriminated union member
                owner = FAMILIES[part].config_class
                continue
            break
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            break
        owner = nested[0]
    return owner


def _dotted(location: list[str]) -> str:
    return ".".join(location) or "config"


def describe_validation_error(
    error: ValidationError,
    root: type[BaseModel] | None = None,
    name: Callable[[list[str]], str] = _dotted,
) -> str:
    """One line for all problems, each naming its key (as a dotted path; `name` may spell it
    otherwise, e.g. as a command-line option, "" for none); an unknown key also lists the keys
    allowed at that place (in `root`, TrainConfig by default), so a typo is fixed without
    opening the source."""
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            owner = _owner(root or TrainConfig, location)
            message = f"unknown key; allowed: {', '.join(owner.model_fields)}"
        tagged = len(location) > 2 and location[0] == "model" and location[1] in FAMILIES
        if tagged:
            del location[1]  # pydantic's union tag is not part of the key the user wrote
        key = name(location)
        lines.append(f"{key}: {message}" if key else message)
    return "; ".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`key.sub=value` strings (value parsed as YAML) applied to a copy of a raw config."""
    result = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {override!r}: expected key=value, e.g. --set seed=3")
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {override!r}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"--set {override!r}: {yaml_problem(error)}") from None
    return result


def load_train_config(path: Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a preset, apply `--set` overrides, validate (pydantic.ValidationError on bad keys;
    ValueError for malformed YAML, OSError for a file that cannot be read)."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError("expected a mapping of config keys")
    return TrainConfig.model_validate(apply_overrides(raw, list(overrides)))
