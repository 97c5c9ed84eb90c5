"""Stage timings: how long each step of a request took, for its log line and the metrics."""
from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timed(timings: dict[str, float], stage: str):
    """Add the seconds the block took to timings[stage] (a stage run twice counts twice). A block
    that raises records nothing: the request's log shows the stages that completed."""
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
