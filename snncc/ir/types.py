"""The type of an edge: the per-sample shape (batch axis excluded) and the coding."""

from __future__ import annotations

from dataclasses import dataclass

from snncc.ir.codings import Analog, Coding


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    coding: Coding = Analog()

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __str__(self) -> str:
        return f"[{','.join(map(str, self.shape))}] {self.coding}"
