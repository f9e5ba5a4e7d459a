"""A trained generator as `ganforge evaluate` and `ganforge sample` take it: from a checkpoint
folder of a run or from a registered (or logged) model, with what its evaluation reads beside
it (the dataset and metrics of its run; a checkpoint's discriminator for a family's own
metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from trainers.metrics.evaluation import Evaluation
    from trainers.sampling import Sampler


class NotACheckpointError(ValueError):
    """A folder without a ganforge checkpoint's config."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint folder whose files cannot be read back (a finding at run time)."""


def check_checkpoint(directory: Path) -> None:
    """NotACheckpointError naming what is wrong; imports nothing heavy, so the command line
    checks --checkpoint before loading torch."""
    from trainers.run_storage import CONFIG_NAME, PROGRESS_NAME

    if not directory.exists():
        raise NotACheckpointError(f"{directory} does not exist")
    missing = [name for name in (CONFIG_NAME, PROGRESS_NAME) if not (directory / name).is_file()]
    if missing:
        raise NotACheckpointError(
            f"{directory} is not a ganforge checkpoint (no {' or '.join(missing)}); give a "
            "checkpoint_* folder of a run, e.g. runs/<run name>/checkpoint_<images>"
        )


@dataclass
class TrainedGenerator:
    sampler: Sampler  # the generator at the stage it is sampled at, with its prior
    data: str  # the dataset its run trained on
    metrics: list[str]  # its run's configured metrics
    kimg: float
    discriminator: torch.nn.Module | None = None  # a checkpoint's (a family's own metrics)
    family_metrics: dict = field(default_factory=dict)  # Family.metrics() of a checkpoint's

    @classmethod
    def from_checkpoint(cls, directory: Path, device: torch.device) -> TrainedGenerator:
        """NotACheckpointError when `directory` holds no ganforge checkpoint,
        DamagedCheckpointError when it holds one that cannot be read."""
        from trainers.checkpoint import load_networks, read_config, read_progress, read_stage
        from trainers.sampling import Sampler

        check_checkpoint(directory)
        try:
            config, stage = read_config(directory), read_stage(directory)
            networks = load_networks(directory, device)
            progress = read_progress(directory)
        except (OSError, ValueError, KeyError, RuntimeError) as error:  # torch.load: RuntimeError
            first = (str(error).strip().splitlines() or [""])[0]
            raise DamagedCheckpointError(
                f"{directory} is damaged: {type(error).__name__}: {first}"
            ) from error
        return cls(
            Sampler.of(networks["G"], config.family.prior, stage.resolution, stage.fade_alpha),
            config.data,
            list(config.metrics),
            progress.kimg,
            networks["D"],
            config.family.metrics(),
        )

    @classmethod
    def from_model(cls, uri: str, tracking_uri: str) -> TrainedGenerator:
        """On the CPU; pipelines.registry.RegistryError for a URI the registry does not hold or
        a model ganforge did not log."""
        from pipelines.registry import load_generator

        loaded = load_generator(uri, tracking_uri)
        meta = loaded.metadata
        return cls(loaded.sampler, meta["data"], meta["metrics"], meta["kimg"])

    def evaluation(self, data: str | None = None, seed: int = 0) -> Evaluation:
        """This generator against `data` (default: its run's dataset)."""
        from trainers.metrics.evaluation import Evaluation

        return Evaluation(
            self.sampler,
            data or self.data,
            seed=seed,
            discriminator=self.discriminator,
            family_metrics=self.family_metrics,
        )
