"""The report of a pipeline run: one self-contained HTML page (images embedded as data URIs),
`<storage>/pipeline-<time>/report.html` and an artifact of the parent MLflow run, built from
what MLflow holds alone, so `ganforge report RUN_ID` rebuilds the same page anywhere.

Per family: the sample grid over training (one row per sample point: the first row of that
kimg's grid of fixed latents), loss and metric curves over kimg (matplotlib), the champion the
gate compared the new candidate with and the candidate, side by side with their gate values,
and the training's lineage (git commit, dataset digest, cluster shape, versions, config).
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines.outcomes import GRIDS_ARTIFACT_DIR, OUTCOMES_ARTIFACT, REPORT_NAME, FamilyOutcome
from pipelines.registry import LINEAGE_TAG_PREFIXES
from trainers.reporting import PROGRESS_KEYS, SAMPLES_DIR, sample_kimg
from trainers.sampling import first_row

NODES_TAG = "ganforge.nodes"  # each rank's node id, beside the lineage tags
TEMPLATE = "report.html.j2"  # in pipelines/templates/


class ReportError(ValueError):
    """A run id that names no pipeline run (exit status 2)."""


@dataclass(frozen=True)
class SamplePoint:
    kimg: float
    image: str  # data URI of the grid's first row


@dataclass(frozen=True)
class FamilySection:
    outcome: FamilyOutcome
    samples: list[SamplePoint]
    curves: str  # data URI of the figure
    lineage: dict[str, str]
    config: str  # the resolved training config, as JSON
    grid: str  # data URI: the candidate's grid
    champion_grid: str | None


def data_uri(image: Image.Image | bytes) -> str:
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode()


def curves_figure(histories: dict[str, list[tuple[float, float]]], metrics: list[str]) -> bytes:
    """PNG of two panels over kimg: the training losses (every step metric but the schedule and
    speed ones) and the evaluation metrics."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(11, 3.6), dpi=80, layout="constrained")
    losses, measured = figure.subplots(1, 2)
    panels = (
        (losses, "training losses (interval means)", [k for k in histories if k not in metrics]),
        (measured, "metrics (lower is better)", metrics),
    )
    for axes, title, keys in panels:
        axes.set_title(title)
        axes.set_xlabel("kimg")
        for key in keys:
            points = histories.get(key)
            if points:
                kimg, values = zip(*points, strict=True)
                # metrics are measured at a few points: marked
                axes.plot(kimg, values, marker="o" if len(points) < 20 else "", label=key)
        if axes.lines:
            axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # same data, same bytes
    return buffer.getvalue()


def _section(client, outcome: FamilyOutcome, grids: Path, work: Path) -> FamilySection:
    run = client.get_run(outcome.run_id)
    columns = int(run.data.params.get("sample_grid", 1))
    folder = Path(client.download_artifacts(outcome.run_id, SAMPLES_DIR, str(work)))
    samples = [
        SamplePoint(sample_kimg(path.name), data_uri(first_row(Image.open(path), columns)))
        for path in sorted(folder.glob("*.png"), key=lambda p: sample_kimg(p.name))
    ]
    histories = {
        key: [(m.step / 1000, m.value) for m in client.get_metric_history(outcome.run_id, key)]
        for key in sorted(run.data.metrics)
        if key not in PROGRESS_KEYS
    }
    config = Path(client.download_artifacts(outcome.run_id, "config.json", str(work)))
    lineage = {
        key: value
        for key, value in sorted(run.data.tags.items())
        if key.startswith(LINEAGE_TAG_PREFIXES) or key == NODES_TAG
    }
    champion = outcome.champion_grid
    return FamilySection(
        outcome,
        samples,
        data_uri(curves_figure(histories, sorted(outcome.metrics))),
        lineage,
        json.dumps(json.loads(config.read_text()), indent=2),
        data_uri((grids / outcome.grid.name).read_bytes()),
        data_uri((grids / champion.name).read_bytes()) if champion else None,
    )


def build_report(run_id: str, tracking_uri: str) -> str:
    """The page of pipeline run `run_id` (its parent MLflow run); ReportError if there is none."""
    import jinja2
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        parent = client.get_run(run_id)
    except MlflowException:
        raise ReportError(f"no MLflow run {run_id!r} in {tracking_uri}") from None
    with tempfile.TemporaryDirectory(prefix="ganforge-report-") as tmp:
        work = Path(tmp)
        try:
            record = client.download_artifacts(run_id, OUTCOMES_ARTIFACT, str(work))
        except (MlflowException, OSError):
            raise ReportError(
                f"MLflow run {run_id} ({parent.info.run_name}) is not a finished pipeline run: "
                f"it has no {OUTCOMES_ARTIFACT}"
            ) from None
        outcomes = [FamilyOutcome.model_validate(o) for o in json.loads(Path(record).read_text())]
        grids = Path(client.download_artifacts(run_id, GRIDS_ARTIFACT_DIR, str(work)))
        sections = [_section(client, outcome, grids, work / outcome.run_id) for outcome in outcomes]
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipelines"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template(TEMPLATE).render(parent=parent, sections=sections)


def record_outcomes(run_id: str, outcomes: list[FamilyOutcome], tracking_uri: str) -> None:
    """What the report reads: the outcomes and every grid, on the pipeline's parent run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for outcome in outcomes:
        for grid in {outcome.grid, outcome.champion_grid} - {None}:
            client.log_artifact(run_id, str(grid), GRIDS_ARTIFACT_DIR)
    client.log_dict(run_id, [o.model_dump(mode="json") for o in outcomes], OUTCOMES_ARTIFACT)


def default_report_path(run_id: str, tracking_uri: str) -> Path:
    """<storage>/<run name>/report.html, as the pipeline run wrote it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        parent = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        raise ReportError(f"no MLflow run {run_id!r} in {tracking_uri}") from None
    return Path(parent.data.params.get("storage", ".")) / parent.info.run_name / REPORT_NAME


def write_report(run_id: str, tracking_uri: str, out: Path, log: bool = False) -> Path:
    """The page at `out`; with `log`, also as an artifact of the run."""
    page = build_report(run_id, tracking_uri)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if log:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri).log_artifact(run_id, str(out))
    return out
