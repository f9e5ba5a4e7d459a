"""MLflow tracking from rank 0. The run id is stored in every checkpoint, so a resumed
training continues the same MLflow run."""

from __future__ import annotations

import json
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainers.files import is_url

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default store, in the working dir
# The gate metric (trainers.reporting.gate_metric): on a training run, of its best evaluation;
# on a registered model version, of its checkpoint's
GATE_METRIC_TAG = "ganforge.gate_metric"
BEST_KIMG_TAG = "ganforge.best_kimg"  # on a training run: where its gate value was lowest


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else MLFLOW_TRACKING_URI, else ./mlflow.db, as an absolute URI, so Ray workers
    (whose working dir differs) write the same store."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    if not is_url(uri):
        return Path(uri).resolve().as_uri()
    return uri


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it if needed. On a SQLite store its artifacts go beside the
    database file (MLflow's default, ./mlruns, depends on the working directory)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlruns").as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.lr": "0.001", ...} for MLflow params."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return flat


class RunLogger:
    """Rank 0's MLflow run, fed from one background thread so that importing MLflow (≈ 6 s),
    creating the run and every upload overlap training instead of stalling it. Calls are
    applied in order; `close` waits for all and ends the run."""

    def __init__(
        self, tracking_uri: str, experiment: str, run_name: str, run_id: str | None, config: dict
    ):
        # MLflow's import computes platform.platform() (its telemetry schema), which runs
        # `uname -p` in a subprocess. Run from the background thread while the loop forks its
        # loader processes, a loader inherits the subprocess's status pipe and the thread waits
        # for good (seen: a hung `make bench` run). Computed here, on this thread, it is cached.
        platform.platform()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._pending: list[Future] = []
        self.run_id_future = self._submit(
            self._open, tracking_uri, experiment, run_name, run_id, config
        )

    def _submit(self, function, *args) -> Future:
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        future = self._executor.submit(function, *args)
        self._pending.append(future)
        return future

    def _open(self, tracking_uri, experiment, run_name, run_id, config) -> str:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self._last_step = -1
        if run_id is not None:  # a resumed training continues its run
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            # After a worker failure Ray restarts from the latest checkpoint, which may precede
            # the last logged step: those steps come again (equal, as resume is exact) and are
            # not logged twice, so every metric's steps stay strictly increasing.
            logged = self.client.get_metric_history(run_id, "kimg")
            self._last_step = max((m.step for m in logged), default=-1)
            return run_id
        run = self.client.create_run(
            experiment_id(self.client, experiment, tracking_uri), run_name=run_name
        )
        self.run_id = run.info.run_id
        params = [Param(key, value[:6000]) for key, value in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.log_dict(self.run_id, config, "config.json")
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], images_shown: int) -> None:
        """Metrics at step = real images shown (MLflow steps are integers; kimg is a metric)."""
        timestamp = int(time.time() * 1000)

        def log():
            from mlflow.entities import Metric

            if images_shown <= self._last_step:
                return

            batch = [Metric(k, float(v), timestamp, images_shown) for k, v in metrics.items()]
            self.client.log_batch(self.run_id, metrics=batch)

        self._submit(log)

    def set_tags(self, tags: dict[str, str]) -> None:
        def log():
            from mlflow.entities import RunTag

            batch = [RunTag(key, value) for key, value in tags.items()]
            self.client.log_batch(self.run_id, tags=batch)

        self._submit(log)

    def log_file(self, path: Path, artifact_dir: str) -> None:
        self._submit(lambda: self.client.log_artifact(self.run_id, str(path), artifact_dir))

    def log_checkpoint(self, directory: Path) -> None:
        """The latest checkpoint under `checkpoint/` (replacing the previous one's files);
        waits, since the caller deletes `directory` next."""
        self._submit(
            lambda: self.client.log_artifacts(self.run_id, str(directory), "checkpoint")
        ).result()

    def close(self, status: str = "FINISHED") -> None:
        """Wait for every upload (raising the first error), then end the run with `status`."""
        try:
            for future in self._pending:
                future.result()
        finally:
            if getattr(self, "run_id", None):
                self.client.set_terminated(self.run_id, status=status)
            self._executor.shutdown()
