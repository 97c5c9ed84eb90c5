"""gunicorn settings for both services; every knob can be set from the environment.

Defaults come from bench/load.py on a 2-core machine (see README): inference is CPU-bound and
onnxruntime/torch already use ORT_THREADS/TORCH_THREADS threads, so few workers with a couple
of threads each keeps both cores busy without oversubscribing them.
"""
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:5000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "2"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))  # a fetch (10 s) + inference fits easily
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Recycle workers now and then against slow leaks; jitter keeps them from restarting together.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "200"))
# No preload: torch and onnxruntime thread pools do not survive fork safely; each worker loads
# its own models after fork, inside the app factory, before gunicorn lets it accept connections.
# So a recycled or reloaded (SIGHUP) worker takes no request until it is ready: meanwhile the
# other workers serve, or requests wait in the listen backlog. A worker must finish loading
# within `timeout`.
preload_app = False
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG", "0") == "1" else None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def on_starting(server):
    # Prometheus multiprocess mode: start from empty files, not a previous run's counters.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))


def child_exit(server, worker):
    # Prometheus multiprocess mode: drop the dead worker's live gauges.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
