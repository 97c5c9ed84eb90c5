"""How both services run under gunicorn (docker/gunicorn.conf.py), declared as settings.

Defaults come from bench/load.py on a 2-core machine (docs/benchmarks.md): inference is CPU-bound and
onnxruntime/torch already use ORT_THREADS/TORCH_THREADS threads, so few workers with a couple of
threads each keeps both cores busy without oversubscribing them.
"""
from __future__ import annotations

from shared.device import DEVICES
from shared.settings import Flag, OptionalText, Settings, choice, setting

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ServerSettings(Settings):
    bind: str = setting("0.0.0.0:5000", env="GUNICORN_BIND", min_length=1, description="address:port to listen on")
    workers: int = setting(2, env="GUNICORN_WORKERS", ge=1, description="worker processes (each loads its own models)")
    threads: int = setting(2, env="GUNICORN_THREADS", ge=1, description="request threads per worker")
    timeout: int = setting(60, env="GUNICORN_TIMEOUT", ge=1,
                           description="seconds a worker may be silent (a fetch of 10 s + inference fits easily)")
    graceful_timeout: int = setting(30, env="GUNICORN_GRACEFUL_TIMEOUT", ge=0,
                                    description="seconds to finish requests on restart")
    max_requests: int = setting(2000, env="GUNICORN_MAX_REQUESTS", ge=0,
                                description="worker recycling against slow leaks (0 = never)")
    max_requests_jitter: int = setting(200, env="GUNICORN_MAX_REQUESTS_JITTER", ge=0,
                                       description="keeps recycled workers from restarting together")
    access_log: Flag = setting(False, env="GUNICORN_ACCESS_LOG", description="one line per request on stdout")
    log_level: choice(*LOG_LEVELS) = setting("info", env="GUNICORN_LOG_LEVEL", description="gunicorn's log level")
    prometheus_dir: OptionalText = setting(
        None, env="PROMETHEUS_MULTIPROC_DIR",
        description="metrics across gunicorn workers (`/tmp/prometheus` in the images); emptied at start")
    # glibc reads it itself at process start; shared/malloc.py then leaves the threshold alone.
    malloc_mmap_threshold: int | None = setting(
        None, env="MALLOC_MMAP_THRESHOLD_", ge=0,
        description="glibc's mmap threshold in bytes; unset = 1 MiB, so freed photos go back to the system")


Device = choice(*DEVICES)


def device_setting():
    """DEVICE, declared once for both services and the indexer (shared/device.py resolves it)."""
    return setting("cpu", env="DEVICE",
                   description="where the models run: `cpu`, `cuda` (onnxruntime's CUDA provider for the bg models, "
                               "CLIP's image tower in fp16 for indexing; falls back to the CPU with a warning), "
                               "`auto` (the GPU when there is one); a log line names the provider each model runs on")
