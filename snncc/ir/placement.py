"""Where a node runs on a chip: a typed field of a node at the hw level, kept by the graph beside its op.

A placement names the chip (0-based, among the chips of a multi-chip system) and the neuromorphic core on it
(0-based). A target's partitioner assigns it (issue "Hardware targets"); the text form prints it after the node's
type (``@chip0.core3``) and the ``.snn`` form stores it per node. Only the hw level allows placements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc.errors import IRError


@dataclass(frozen=True)
class Placement:
    chip: int
    core: int

    def __post_init__(self) -> None:
        for name in ("chip", "core"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise IRError(f"Placement: {name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))

    def to_json(self) -> dict[str, int]:
        return {"chip": self.chip, "core": self.core}

    def __str__(self) -> str:
        return f"@chip{self.chip}.core{self.core}"
