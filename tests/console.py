"""What a user sees when the commands' output goes to a file or a pipe."""

from __future__ import annotations

import re


def assert_plain_console(text: str, trainings: int) -> None:
    """No cursor codes, no line twice (as when two raylets' log monitors forwarded the same
    worker output), and one final line per training."""
    assert "\x1b" not in text and "\r" not in text, repr(text[-1000:])
    lines = [line for line in text.splitlines() if line.strip()]
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, text[-3000:]
    finals = [line for line in lines if re.match(r"\S+ (finished|failed) at kimg", line)]
    assert len(finals) == trainings, text[-3000:]
