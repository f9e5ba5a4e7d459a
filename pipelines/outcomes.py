"""What a pipeline run leaves per training, as `ganforge pipeline run` sums it up and its report
reads it back: names and types only.

The pipeline's parent MLflow run holds OUTCOMES_ARTIFACT (the list of FamilyOutcome), the sample
grids under GRIDS_ARTIFACT_DIR and the report; the run folder `<storage>/pipeline-<time>/`
holds the same grids, REPORT_NAME and PIPELINE_LOG_NAME.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipelines.registry import CHAMPION, Release

OUTCOMES_ARTIFACT = "outcomes.json"
GRIDS_ARTIFACT_DIR = "grids"
REPORT_NAME = "report.html"
PIPELINE_LOG_NAME = "pipeline.log"  # what `dvc repro` printed


class FamilyOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)
    family: str
    run_id: str  # the training's MLflow run (an earlier pipeline's when reused)
    candidate: Release  # the version registered from it
    champion_before: Release | None  # what the gate compared it with; None: no champion yet
    metrics: dict[str, float]  # measured at the registered checkpoint
    promotion: str  # what the gate decided
    grid: Path  # from the candidate
    champion_grid: Path | None  # from champion_before, with the same latents
    reused: bool  # True: an earlier pipeline run trained and registered this already

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.candidate.name}@{CHAMPION}"


class PipelineRun(BaseModel):
    name: str  # pipeline-<time>: the parent MLflow run's name and the run folder's
    run_id: str  # the parent MLflow run
    outcomes: list[FamilyOutcome]
    report: Path
