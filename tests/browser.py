"""Headless Chromium from Debian's packages, for tests that open a page as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Nothing leaves the machine (no updates, no sync, no QUIC probes); each run starts from a new
# profile; --no-sandbox, as root in a container
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def install_chromium() -> tuple[str | None, str]:
    """The chromium binary, installed with apt-get where missing; else None and why not."""
    found = shutil.which("chromium")
    if found:
        return found, ""
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and there is no apt-get (not Debian) to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed and apt-get needs root to install it"
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:  # stale package lists: refresh them once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        return None, f"`apt-get install -y chromium` failed: {result.stderr.strip()[-500:]}"
    return shutil.which("chromium"), ""


def chromium(binary: str, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium with a fresh profile; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def page_url(path: Path) -> str:
    return path.resolve().as_uri()
