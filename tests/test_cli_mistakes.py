"""Every mistake of tests/mistakes.py, as a user makes it: the exit status (2 for the user's to
fix, 1 for a failure at run time), one line (two at most) naming the input, no traceback, and
nothing written. How long each takes is recorded (`seconds`), not asserted: `make bench`
reports it per command against its 2 s budget."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.mistakes import MISTAKES, REPO, applies, make_scene, run


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mistakes")
    make_scene(folder)
    return folder


def listing(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")}


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: m.name)
def test_mistake_is_one_line_and_its_exit_status(mistake, scene, record_property):
    if not applies(mistake):
        pytest.skip("root may write anywhere")
    before = listing(scene)
    outcome = run(mistake, scene)
    record_property("seconds", round(outcome.seconds, 3))
    text = "\n".join(outcome.lines)
    assert outcome.status == mistake.status, text
    assert 1 <= len(outcome.lines) <= 2, text
    assert "Traceback" not in text
    assert mistake.says.format(scene=scene, repo=REPO) in text
    assert listing(scene) == before  # a mistake costs nothing: no --out left behind either


def test_debug_shows_the_traceback_of_a_failure(scene):
    """--debug (or GANFORGE_DEBUG=1) prints the traceback, then the same one-line error."""
    (damaged,) = [m for m in MISTAKES if m.name == "verify damaged manifest"]
    outcome = run(damaged, scene)
    debugged = run(dataclasses.replace(damaged, args=("--debug", *damaged.args)), scene)
    assert "Traceback" not in "\n".join(outcome.lines)
    assert "Traceback (most recent call last):" in debugged.lines[0]
    assert debugged.lines[-1] == outcome.lines[-1] and debugged.status == outcome.status == 1
