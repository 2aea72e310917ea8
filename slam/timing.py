"""Per-stage wall-clock timing (milliseconds), thread-safe, for stats.json and --profile."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


class StageTimer:
    """Accumulates durations per named stage; ``with timer.stage("extract"): ...``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)
        self._last: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1000.0)

    def add(self, name: str, ms: float) -> None:
        with self._lock:
            self._total[name] += ms
            self._count[name] += 1
            self._last[name] = ms

    def mean_ms(self) -> dict[str, float]:
        with self._lock:
            return {k: round(self._total[k] / max(self._count[k], 1), 3) for k in sorted(self._total)}

    def total_ms(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 3) for k, v in sorted(self._total.items())}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._count.items()))

    def last_ms(self) -> dict[str, float]:
        with self._lock:
            return dict(self._last)
