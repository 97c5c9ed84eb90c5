"""gunicorn settings for both services, from the typed ServerSettings (shared/server.py).

The master checks every setting before it forks a worker: its own (GUNICORN_*), then the
service's (bgremoval/config.py or search/config.py, chosen by the app it serves). A bad value
stops it with one line naming the variable, the value and what is allowed, and exit status 2,
instead of workers failing to boot one after another.
"""
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

from shared.server import ServerSettings  # noqa: E402
from shared.settings import exit_on_bad_settings  # noqa: E402

_server = exit_on_bad_settings(ServerSettings.from_env)

bind = _server.bind
workers = _server.workers
threads = _server.threads
worker_class = "gthread"
# No gunicornc control socket: its one default path (~/.gunicorn/gunicorn.ctl) would be shared by
# every gunicorn on the host (both services, and every server the tests start).
control_socket_disable = True
timeout = _server.timeout
graceful_timeout = _server.graceful_timeout
keepalive = 5
# Recycle workers now and then against slow leaks; jitter keeps them from restarting together.
max_requests = _server.max_requests
max_requests_jitter = _server.max_requests_jitter
# No preload: torch and onnxruntime thread pools do not survive fork safely; each worker loads
# its own models after fork, inside the app factory, before gunicorn lets it accept connections.
# So a recycled or reloaded (SIGHUP) worker takes no request until it is ready: meanwhile the
# other workers serve, or requests wait in the listen backlog. A worker must finish loading
# within `timeout`.
preload_app = False
accesslog = "-" if _server.access_log else None
errorlog = "-"
loglevel = _server.log_level


def on_starting(server):
    # The service's own settings, checked in the master: "bgremoval:create_app()" -> bgremoval.config.
    package = server.app.app_uri.split(":", 1)[0].split(".", 1)[0]
    config = importlib.import_module(f"{package}.config")
    exit_on_bad_settings(config.check_settings)
    # Prometheus multiprocess mode: start from empty files, not a previous run's counters.
    directory = _server.prometheus_dir
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))


def child_exit(server, worker):
    # Prometheus multiprocess mode: drop the dead worker's live gauges.
    if _server.prometheus_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
