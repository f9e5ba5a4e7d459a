"""The `ganforge` command line, one module per command group:

  data.py      ganforge data build | verify | stats
  train.py     ganforge train
  evaluate.py  ganforge evaluate | sample
  promote.py   ganforge promote
  pipeline.py  ganforge pipeline run | deploy
  report.py    ganforge report
  common.py    exit statuses and what the groups share

Heavy imports (Prefect, torch) happen inside commands so that `--help` is instant and dataset
pool workers stay light. Exit status: 0 success, 2 bad usage, 1 a failure at run time.
"""

from __future__ import annotations

import os

import typer

from pipelines.cli import data, evaluate, pipeline, promote, report, train

app = typer.Typer(
    help="ganforge: build GAN datasets, train, evaluate and release generators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(data.app, name="data")
app.add_typer(pipeline.app, name="pipeline")
app.command("evaluate")(evaluate.evaluate)
app.command("sample")(evaluate.sample)
app.command("promote")(promote.promote)
app.command("report")(report.report)
app.command("train")(train.train)


@app.callback()
def _process_defaults() -> None:
    # MLflow draws a "Downloading artifacts" bar per file of every model it loads, and logs
    # its database migrations, into the middle of the commands' own output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
