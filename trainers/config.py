"""The training stage's typed config: one file per preset under configs/train/, validated here.

Defaults are the official code's; each field says why in one line. Unknown keys are errors
(extra="forbid") so a typo never trains with a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainers.data.format import MAX_RESOLUTION, MIN_RESOLUTION, check_resolution
from trainers.metrics import BEGAN_CONVERGENCE, check_metric_names
from trainers.schedule import GrowthSchedule

Resolution = Annotated[int, Field(ge=MIN_RESOLUTION, le=MAX_RESOLUTION)]
Betas = tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FixedResolutionModel(_Strict):
    """A family whose nets are built for one resolution: 32, 64 or 128 (the papers' range)."""

    resolution: Resolution = 64  # the papers' main results are at 64²

    @field_validator("resolution")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in (32, 64, 128):
            raise ValueError(f"must be 32, 64 or 128 for the {cls.__name__} nets, got {value}")
        return value


class WganGpModel(_FixedResolutionModel):
    """Gulrajani et al. 2017, DCGAN-style G and critic (the paper's official defaults)."""

    family: Literal["wgan_gp"] = "wgan_gp"
    latent_dim: int = Field(default=128, ge=1)  # official code's noise size
    base_channels: int = Field(default=64, ge=1)  # DIM in the official DCGAN nets
    n_critic: int = Field(default=5, ge=1)  # critic steps per generator step
    gp_weight: float = Field(default=10.0, ge=0)  # λ: the paper's penalty weight
    lr: float = Field(default=1e-4, gt=0)  # Adam α of the paper
    betas: Betas = (0.0, 0.9)  # the paper's Adam β1, β2


class BeganModel(_FixedResolutionModel):
    """Berthelot et al. 2017: autoencoder discriminator with k_t equilibrium control."""

    family: Literal["began"] = "began"
    latent_dim: int = Field(default=64, ge=1)  # N_z = h = 64 in the paper
    channels: int = Field(default=64, ge=1)  # n = 64 filters in the paper's nets
    gamma: float = Field(default=0.5, gt=0, le=1)  # diversity ratio γ of the paper
    lambda_k: float = Field(default=0.001, gt=0)  # λ_k: k_t's proportional gain
    k_initial: float = Field(default=0.0, ge=0, le=1)  # k_0 = 0 in the paper
    lr: float = Field(default=8e-5, gt=0)  # official starting learning rate
    betas: Betas = (0.5, 0.999)  # official Adam β1, β2
    lr_halve_every_kimg: float = Field(default=1600.0, gt=0)  # official: every 100k steps of 16
    lr_floor: float = Field(default=2e-5, gt=0)  # the official code stops decaying here


class ProganModel(_Strict):
    """Karras et al. 2018: progressive growing with fade-in, WGAN-GP loss with drift."""

    family: Literal["progan"] = "progan"
    resolution: Resolution = 1024  # the resolution growing ends at
    start_resolution: Resolution = 4  # the paper starts at 4²
    latent_dim: int = Field(default=512, ge=1)  # the paper's 512-d latent
    fmap_base: int = Field(default=8192, ge=1)  # channels = min(fmap_base / 2^stage, fmap_max)
    fmap_max: int = Field(default=512, ge=1)  # official cap of feature maps per layer
    mbstd_group_size: int = Field(default=4, ge=1)  # minibatch-stddev group of the paper
    fade_kimg: float = Field(default=600.0, gt=0)  # official lod_transition_kimg
    stable_kimg: float = Field(default=600.0, gt=0)  # official lod_training_kimg
    n_critic: int = Field(default=1, ge=1)  # official: one D step per G step
    gp_weight: float = Field(default=10.0, ge=0)  # λ of WGAN-GP, as the paper
    drift_weight: float = Field(default=0.001, ge=0)  # ε_drift keeps D's output near 0
    lr: float = Field(default=1e-3, gt=0)  # the paper's Adam α
    betas: Betas = (0.0, 0.99)  # the paper's Adam β1, β2
    adam_eps: float = Field(default=1e-8, gt=0)  # the paper's Adam ε
    ema_beta: float = Field(default=0.999, ge=0, lt=1)  # the paper's generator EMA decay
    reset_optimizer_on_grow: bool = True  # official: fresh Adam state at each resolution

    @field_validator("resolution", "start_resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return check_resolution(value)

    @model_validator(mode="after")
    def _start_below_end(self) -> ProganModel:
        if self.start_resolution > self.resolution:
            raise ValueError(
                f"start_resolution {self.start_resolution} is above resolution {self.resolution}"
            )
        return self


ModelConfig = Annotated[WganGpModel | BeganModel | ProganModel, Field(discriminator="family")]


class TrainConfig(_Strict):
    """One training run: the family's model section plus schedule, batch and logging."""

    model: ModelConfig
    data: str = "data/quickstart"  # dataset folder written by `ganforge data build`
    seed: int = Field(default=0, ge=0)  # fixes init, latents, data order: reruns are equal
    workers: int = Field(default=1, ge=1)  # Ray Train workers (one per GPU on a cluster)
    # elastic: after a node is lost Ray Train may go on with as few as this many workers
    # (ScalingConfig(num_workers=(min_workers, workers))), the global batch unchanged;
    # None keeps the size fixed (a lost node then waits for its replacement)
    min_workers: int | None = Field(default=None, ge=1)
    total_kimg: float = Field(gt=0)  # training length in thousands of real images shown
    # Global batch per resolution (split evenly over workers); the official ProGAN table is
    # {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4}.
    batch_per_resolution: dict[int, int]
    lr_per_resolution: dict[int, float] = {}  # optional override of model.lr per resolution
    auto_batch: bool = False  # GPU: largest power-of-two batch within the memory fraction
    auto_batch_memory_fraction: float = Field(default=0.8, gt=0, le=1)  # of device memory
    loader_workers: int = Field(default=1, ge=0)  # decode processes per training worker
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
    # metrics by registered name (trainers/metrics: fid50k, kid50k, swd16k, m_global ...),
    # measured over all ranks every eval_every_kimg and at the end; the first one measured
    # (FID, say, or SWD listed next for when no Inception weights are at hand) ranks the
    # checkpoints: the best is kept and marked
    metrics: list[str] = []
    eval_every_kimg: float | None = Field(default=None, gt=0)  # None: at the end only

    @property
    def resolutions(self) -> list[int]:
        """Every resolution trained, in order."""
        start = getattr(self.model, "start_resolution", self.model.resolution)
        return [r for r in (2**i for i in range(2, 11)) if start <= r <= self.model.resolution]

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
        for name in self.metrics:
            if name == BEGAN_CONVERGENCE and self.model.family != "began":
                raise ValueError(f"metrics: {name} is BEGAN's; this is a {self.model.family} run")
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
        group = getattr(self.model, "mbstd_group_size", 1)
        if per_worker % min(group, per_worker):
            raise ValueError(
                f"batch_per_resolution[{resolution}] = {batch} gives {per_worker} per worker, "
                f"not a multiple of mbstd_group_size {group}"
            )
        return per_worker

    @property
    def growth_schedule(self) -> GrowthSchedule:
        """Resolution and fade-in at any kimg (one stage for the fixed-resolution families)."""
        return GrowthSchedule(
            tuple(self.resolutions),
            getattr(self.model, "fade_kimg", 1.0),
            getattr(self.model, "stable_kimg", 1.0),
        )

    def lr_at(self, resolution: int) -> float:
        return self.lr_per_resolution.get(resolution, self.model.lr)


FAMILIES: dict[str, type[BaseModel]] = {
    model.model_fields["family"].default: model for model in (WganGpModel, BeganModel, ProganModel)
}


def describe_validation_error(error: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line per problem, naming the key as a dotted path; an unknown key also lists the
    keys allowed at that place (in `root`, TrainConfig by default), so a typo is fixed without
    opening the source."""
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            owner = root or TrainConfig
            if location[:1] == ["model"] and len(location) > 2 and location[1] in FAMILIES:
                owner = FAMILIES[location[1]]
            message = f"unknown key; allowed: {', '.join(owner.model_fields)}"
        if location[:1] == ["model"] and len(location) > 2 and location[1] in FAMILIES:
            del location[1]  # pydantic's union tag is not part of the key the user wrote
        lines.append(f"{'.'.join(location) or 'config'}: {message}")
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
        node[leaf] = yaml.safe_load(text)
    return result


def load_train_config(path: Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a preset, apply `--set` overrides, validate (pydantic.ValidationError on bad keys)."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    return TrainConfig.model_validate(apply_overrides(raw, list(overrides)))
