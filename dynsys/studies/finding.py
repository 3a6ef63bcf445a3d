"""One line of an experiment's verdict."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Finding:
    """A claim of the argument, what was measured, and whether it holds (None where the
    experiment describes rather than tests)."""

    experiment: str
    claim: str
    measured: str
    holds: bool | None
