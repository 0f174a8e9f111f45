"""Where user reports of wrong verdicts go until the corrections store (a later issue) makes them durable.

`CorrectionQueue` is the interface the handlers use; `MemoryCorrectionQueue` keeps the latest reports in a
bounded in-memory deque (lost at restart), enough to accept invertornot.com clients' `/api/correction`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class CorrectionReport:
    url: str
    # What the service answered for the URL when the report came in (None: it had no verdict for it).
    sha256: str | None
    model: str | None
    reported_invert: bool | None
    client: str
    received_at: float = field(default_factory=time.time)

    @property
    def suggested_invert(self) -> bool | None:
        """A report says the answer was wrong, so the suggestion is its opposite (as invertornot.com reads it)."""
        return None if self.reported_invert is None else not self.reported_invert


class CorrectionQueue(Protocol):
    async def submit(self, report: CorrectionReport) -> None: ...

    def pending(self) -> list[CorrectionReport]: ...


class MemoryCorrectionQueue:
    """The newest `capacity` reports, oldest dropped first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._reports: deque[CorrectionReport] = deque(maxlen=capacity)

    async def submit(self, report: CorrectionReport) -> None:
        self._reports.append(report)

    def pending(self) -> list[CorrectionReport]:
        return list(self._reports)
