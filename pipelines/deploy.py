"""`ganforge pipeline deploy`: the pipeline flow as a Prefect deployment on a cron schedule.

The deployment runs `scheduled_pipeline` from this checkout (Prefect's local source storage:
the worker must see the same path, e.g. a shared filesystem or the same image) on a `process`
work pool; `prefect worker start --pool ganforge` on a cluster node picks its runs up.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from uuid import UUID

WORK_POOL = "ganforge"
ENTRYPOINT = "pipelines/end_to_end.py:scheduled_pipeline"  # relative to the checkout


class DeployError(ValueError):
    """Bad input for a deployment (exit status 2)."""


class DeployFailed(RuntimeError):
    """The Prefect server could not be reached or refused the deployment (exit status 1)."""


def ensure_work_pool(name: str) -> None:
    """A `process` work pool named `name`, created if missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy_pipeline(
    config: Path, cron: str, name: str, work_pool: str = WORK_POOL, source: Path = Path(".")
) -> UUID:
    """Create (or update) deployment `ganforge-scheduled-pipeline/<name>` running the pipeline
    config `config` (a path inside `source`) on `cron`; returns the deployment id."""
    import httpx
    from prefect.client.schemas.schedules import CronSchedule

    from pipelines.end_to_end import scheduled_pipeline

    source = source.resolve()
    if not (source / ENTRYPOINT.split(":")[0]).is_file():
        raise DeployError(f"--source {source}: not a ganforge checkout (no {ENTRYPOINT})")
    try:
        schedule = CronSchedule(cron=cron)
    except ValueError:
        raise DeployError(f"--cron {cron!r}: not a cron expression, e.g. '0 3 * * *'") from None
    try:
        ensure_work_pool(work_pool)
        flow = scheduled_pipeline.from_source(source=str(source), entrypoint=ENTRYPOINT)
        # to_deployment + apply, not flow.deploy: with Prefect 3.8.8's server, deploy's query
        # for online workers is rejected (422: limit and offset sent as null)
        deployment = flow.to_deployment(
            name=name,
            work_pool_name=work_pool,
            schedule=schedule,
            parameters={"config": str(config)},
        )
        return deployment.apply()
    except httpx.HTTPError as error:  # refused, unresolvable, timed out, or an error status
        from prefect.settings import PREFECT_API_URL

        raise DeployFailed(
            f"the Prefect server at {PREFECT_API_URL.value()} failed: "
            f"{type(error).__name__}: {error}; no deployment was made or changed"
        ) from error
