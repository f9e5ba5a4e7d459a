"""Seeds derived from a run's seed: one hash, so every stream is fixed by what it is for (a
loader epoch, an evaluation chunk), never by the world size or the order streams are made in."""

from __future__ import annotations

import hashlib


def derived_seed(*parts: object) -> int:
    """A 56-bit seed from sha256 of the parts joined by ':' (e.g. derived_seed("latents", seed,
    chunk)); equal parts give equal seeds on every machine and Python version."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:7], "big")
