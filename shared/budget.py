"""A per-worker cap on the megapixels being processed at once: memory bounded by configuration,
not by what clients send.

Work on a photo costs memory in proportion to its pixels (6-9 bytes a pixel in the bg
pipeline). Each request reserves its megapixels before decoding; past the budget it waits a
short while for others to finish, then gets 503 with Retry-After, instead of pushing the
worker into an out-of-memory kill that would take every request in flight down with it.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from shared.errors import Overloaded


class PixelBudget:
    def __init__(self, capacity_mp: float, wait_s: float, retry_after_s: int = 2):
        if capacity_mp <= 0:
            raise ValueError("the in-flight megapixel budget must be positive")
        self.capacity = capacity_mp
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.in_flight = 0.0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int):
        """Hold `pixels` of the budget while the block runs. A photo larger than the whole budget
        runs alone (it reserves all of it)."""
        weight = min(pixels / 1e6, self.capacity)
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.in_flight + weight > self.capacity + 1e-9:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Overloaded(
                        f"This worker is already processing {self.in_flight:.1f} of its {self.capacity:g} "
                        f"megapixel budget and this photo needs {weight:.1f}; retry in a few seconds.",
                        retry_after=self.retry_after_s)
                self._cond.wait(remaining)
            self.in_flight += weight
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= weight
                self._cond.notify_all()
