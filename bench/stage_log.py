"""The stage timings the services log per request, collected in-process for benchmarks."""
from __future__ import annotations

import json
import logging


def capture_stage_records() -> list[dict]:
    """A list that fills with each request's log record (the JSON line of logger "fashion.http",
    with its "stages_ms") from now on."""
    records: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record):
            try:
                records.append(json.loads(record.getMessage()))
            except ValueError:
                pass

    logging.getLogger("fashion.http").addHandler(Capture())
    return records
