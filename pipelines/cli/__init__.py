"""The `ganforge` command line, one module per command group:

  data.py      ganforge data build | verify | stats
  train.py     ganforge train
  evaluate.py  ganforge evaluate | sample
  promote.py   ganforge promote
  pipeline.py  ganforge pipeline run | deploy
  report.py    ganforge report
  common.py    exit statuses and what the groups share

Heavy imports (Prefect, Ray, MLflow, torch) happen inside commands, after what the command
was given is checked, so that `--help` and usage errors take a fraction of a second and the
dataset build's processes stay light. Exit status: 0 success, 2 bad usage, 1 a failure at run
time; each error is one line, its traceback shown with `ganforge --debug` (or GANFORGE_DEBUG=1).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

# typer (0.29) runs a copy of Click of its own and exports only Exit and Abort of its errors
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from pipelines.cli import data, evaluate, pipeline, promote, report, train
from pipelines.cli.common import DEBUG_ENV, RUNTIME_ERROR, debugging, error_line


class _Ganforge(typer.Typer):
    """The app as the console script runs it: every error is one line on stderr. A usage
    mistake Click finds (an unknown option, a value out of range) exits 2; an exception no
    command expected is a runtime failure, exit 1, its traceback shown only when debugging."""

    def __call__(self, *args, **kwargs):
        try:
            status = super().__call__(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:
            error.show()  # the help, as a bare `ganforge` or `ganforge data` asks for
            sys.exit(error.exit_code)
        except UsageError as error:
            where = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
            error_line(f"{error.format_message().rstrip('.')}{where}")
            sys.exit(error.exit_code)
        except ClickException as error:
            error_line(error.format_message())
            sys.exit(error.exit_code)
        except typer.Abort:
            error_line("aborted")
            sys.exit(RUNTIME_ERROR)
        except Exception as error:
            if debugging():
                raise
            what = (str(error).strip().splitlines() or [""])[0]
            error_line(f"{type(error).__name__}: {what} (the traceback: ganforge --debug ...)")
            sys.exit(RUNTIME_ERROR)
        sys.exit(status if isinstance(status, int) else 0)


app = _Ganforge(
    help="ganforge: build GAN datasets, train, evaluate and release generators.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help=f"Show the traceback of a failure (also: {DEBUG_ENV}=1).",
            show_default=False,
        ),
    ] = False,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"  # read by every error exit, in this process and its children
    # MLflow draws a "Downloading artifacts" bar per file of every model it loads, and logs
    # its database migrations, into the middle of the commands' own output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


app.add_typer(data.app, name="data")
app.add_typer(pipeline.app, name="pipeline")
app.command("evaluate")(evaluate.evaluate)
app.command("sample")(evaluate.sample)
app.command("promote")(promote.promote)
app.command("report")(report.report)
app.command("train")(train.train)
