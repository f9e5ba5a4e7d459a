"""configs/pipeline/*.yaml, validated: what `ganforge pipeline run` does and what a deployment
runs. Apart from the flow (pipelines/end_to_end.py) so that a mistake in it is reported before
Prefect is imported."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from trainers.config import TrainConfig, describe_validation_error, load_train_config
from trainers.files import read_yaml


class PipelineConfig(BaseModel):
    """configs/pipeline/*.yaml: what `ganforge pipeline run` does, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repro: bool = True  # `dvc repro` first: the dataset and its real statistics (dvc.yaml)
    # training presets, one Ray Train job each; relative paths from the folder the flow runs in
    # (a deployment's: its --source checkout)
    trainings: list[Path] = Field(min_length=1)
    overrides: list[str] = []  # --set KEY=VALUE applied to every training
    experiment: str = "ganforge"  # MLflow experiment of the parent run and its children
    storage: Path = Path("runs")  # training runs live in <storage>/<run name>/
    promote: bool = True  # move champion to a new version that passes the gate
    samples: int = Field(default=64, ge=1, le=1024)  # images per grid from each new model
    seed: int = 0  # fixes the grids' latents

    @model_validator(mode="after")
    def _trainings_validate(self, info: ValidationInfo) -> PipelineConfig:
        root = (info.context or {}).get("root", Path("."))
        for path in self.trainings:  # a bad preset fails before anything runs
            try:
                self.training(root / path)
            except ValidationError as error:
                raise ValueError(f"{path}: {describe_validation_error(error)}") from None
            except OSError as error:
                raise ValueError(f"{path}: {error.strerror}") from None
            except ValueError as error:  # malformed YAML in the preset or an override
                raise ValueError(f"{path}: {error}") from None
        return self

    def training(self, path: Path) -> TrainConfig:
        """The preset at `path` with the overrides, in this pipeline's experiment."""
        return load_train_config(path, [*self.overrides, f"experiment={self.experiment}"])


def load_pipeline_config(path: Path, root: Path = Path(".")) -> PipelineConfig:
    """The config at `path`, its training presets read relative to `root` (the folder the flow
    will run in); ValidationError naming a bad key, ValueError for malformed YAML, OSError for a
    file that cannot be read."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError("expected a mapping of pipeline keys")
    return PipelineConfig.model_validate(raw, context={"root": root})
