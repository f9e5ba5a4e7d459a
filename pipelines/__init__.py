"""ganforge's Prefect side: dataset build flows, pipeline flows and the `ganforge` CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ganforge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
