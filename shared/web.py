"""Flask plumbing both services share: problem+json errors, request ids, structured logs,
health/readiness, Prometheus metrics, the OpenAPI document, strict JSON body parsing, the
security headers on every response and the services' web pages."""
from __future__ import annotations

import importlib
import json
import logging
import os
import time
import uuid
from typing import Any, Callable

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from werkzeug.exceptions import HTTPException

from shared.errors import BadRequest, NotReady, ProblemError, UnsupportedMediaType
from shared.server import ServerSettings

log = logging.getLogger("fashion.http")
PROBLEM_MIMETYPE = "application/problem+json"

# On every response, JSON, image, HTML page or asset alike. The pages load only their own script
# and style files (no inline script, no eval, no inline style); images may also come from any
# http(s) address (the bg page shows a URL's "before" picture straight from it; absolute result
# urls under PUBLIC_BASE_URL), blob: (a result the page just received) and data:.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob: data: http: https:",
    "connect-src 'self'", "form-action 'self'", "base-uri 'none'", "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def problem_response(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": extra.pop("type", "about:blank"), "title": title, "status": status, "detail": detail, **extra}
    if getattr(g, "request_id", None):
        body["request_id"] = g.request_id
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)


class Readiness:
    """Tracks whether a service's models/index are loaded; shown by /readyz and request guards."""

    def __init__(self) -> None:
        self.ready = False
        self.error: str | None = None
        self.detail = "loading"
        self.info: dict[str, Any] = {}  # extra fields for /readyz (e.g. the search backend)
        # More fields, read at each /readyz: what changes while serving (the index generation).
        self.dynamic_info: Callable[[], dict[str, Any]] | None = None
        # Called by /readyz once loaded: raises when a dependency (a vector database) cannot
        # answer right now; its message becomes the 503's reason. The service recovers by itself.
        self.probe: Callable[[], None] | None = None

    def set_ready(self, detail: str = "ready") -> None:
        self.ready, self.error, self.detail = True, None, detail

    def set_failed(self, error: str) -> None:
        self.ready, self.error, self.detail = False, error, "failed"

    def require(self) -> None:
        if not self.ready:
            raise NotReady(self.error or "The service is still loading its models; retry shortly.")


class Metrics:
    def __init__(self, service: str, multiprocess_dir: str | None = None) -> None:
        # PROMETHEUS_MULTIPROC_DIR (ServerSettings.prometheus_dir): prometheus_client reads the
        # variable itself to write each worker's files; /metrics then adds them up.
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["service", "endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["service", "endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.inference = Histogram(
            "model_inference_seconds", "Time spent in each model/pipeline stage", ["service", "stage"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.service = service
        self.query_latency = Histogram(
            "search_query_seconds", "Time to rank products for one query, by vector backend", ["service", "backend"],
            registry=self.registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )

    def observe_stages(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.inference.labels(self.service, stage).observe(seconds)

    def exposition(self) -> bytes:
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def json_object_body() -> dict:
    """The request body as a JSON object, or a 415/400 problem saying what is wrong."""
    if not request.is_json:
        raise UnsupportedMediaType(
            f"Send a JSON object with Content-Type: application/json (got {request.mimetype or 'none'!r})."
        )
    try:
        body = json.loads(request.get_data(cache=True) or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"The JSON body must be an object, not {type(body).__name__}.")
    return body


def stage_timings() -> dict[str, float]:
    """Per-request dict the handlers fill with pipeline stage timings (logged and measured)."""
    if "stage_timings" not in g:
        g.stage_timings = {}
    return g.stage_timings


def install_common(app: Flask, *, service: str, readiness: Readiness, openapi: dict,
                   server: ServerSettings) -> None:
    """Error handlers, request ids, logs, metrics and the ops endpoints, on one app."""
    metrics = Metrics(service, server.prometheus_dir)
    app.extensions["metrics"] = metrics
    app.extensions["readiness"] = readiness
    app.json.sort_keys = False

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        response.headers["X-Request-ID"] = g.get("request_id", "")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        metrics.requests.labels(service, endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(service, endpoint).observe(elapsed)
        timings = g.get("stage_timings") or {}
        metrics.observe_stages(timings)
        if endpoint not in ("/healthz", "/readyz", "/metrics"):
            log.info(json.dumps({
                "service": service, "request_id": g.get("request_id"), "method": request.method,
                "path": request.path, "status": response.status_code,
                "ms": round(elapsed * 1000, 2),
                "stages_ms": {k: round(v * 1000, 2) for k, v in timings.items()},
            }))
        return response

    @app.errorhandler(ProblemError)
    def _problem(exc: ProblemError) -> Response:
        body = exc.to_dict()
        status = body.pop("status")
        response = problem_response(status, body.pop("title"), body.pop("detail"), **body)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        detail = exc.description or exc.name
        if exc.code == 413:
            limit = request.max_content_length  # per request where a service sets it (search: JSON vs photos)
            detail = f"The request body is larger than the {limit:,}-byte limit." if limit else detail
        response = problem_response(exc.code or 500, exc.name, detail)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error (request_id=%s)", g.get("request_id"))
        return problem_response(500, "Internal server error",
                                "An unexpected error occurred; it has been logged with this request id.")

    ops = Blueprint("ops", __name__)

    @ops.get("/healthz")
    def healthz():
        return jsonify(status="ok", service=service)

    @ops.get("/readyz")
    def readyz():
        if readiness.ready and readiness.probe is not None:
            try:
                readiness.probe()
            except Exception as exc:  # noqa: BLE001 - the probe's message is the reason
                return problem_response(503, "Dependency unavailable", str(exc))
        if readiness.ready:
            dynamic = readiness.dynamic_info() if readiness.dynamic_info is not None else {}
            return jsonify(status="ready", service=service, detail=readiness.detail, **{**readiness.info, **dynamic})
        title = "Not ready" if readiness.error is None else "Failed to load"
        return problem_response(503, title, readiness.error or "Loading models; not ready yet.")

    @ops.get("/metrics")
    def metrics_endpoint():
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @ops.get("/openapi.json")
    def openapi_document():
        return jsonify(openapi)

    app.register_blueprint(ops)


def create_service_app(import_name: str, *, service: str, openapi: dict, blueprint: Blueprint,
                       max_body_bytes: int, settings: tuple[str, Any], loader: Callable[[Flask], str],
                       page: str | None = None) -> Flask:
    """The app both services build: common plumbing, their blueprint, and models loaded by
    `loader(app)` (returns the readiness detail) before the app is returned. `page` names the
    module whose `bp` blueprint serves the service's web page (GET /) and its assets; the assets
    both pages share are served by shared.pages.

    Loading happens here, in the worker, before it serves: gunicorn calls the app factory in
    each worker before the worker accepts connections, so a worker that boots or is recycled
    takes no request until its models are in memory. Requests wait in the listen backlog or go
    to the other workers meanwhile, instead of getting 503 "still loading". A load that fails
    (missing weights, broken index) does not stop the worker: /readyz and every request then
    answer 503 with the reason, so the container healthcheck and the operator see why.
    """
    from shared.malloc import return_large_blocks

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = settings[1].server  # the service config's gunicorn section (shared/server.py)
    # Before the models load: their freed buffers go back too.
    return_large_blocks(preset=server.malloc_mmap_threshold)
    app = Flask(import_name, static_folder=None)  # assets come from the page blueprints only
    app.config[settings[0]] = settings[1]
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    readiness = Readiness()
    install_common(app, service=service, readiness=readiness, openapi=openapi, server=server)
    app.register_blueprint(blueprint)
    if page is not None:
        from shared.pages import assets

        app.register_blueprint(assets)
        app.register_blueprint(importlib.import_module(page).bp)
    load_before_serving(readiness, lambda: loader(app))
    return app


def load_before_serving(readiness: Readiness, loader: Callable[[], str]) -> None:
    """Run `loader` (returns a readiness detail) now, recording success or the failure's reason."""
    started = time.perf_counter()
    try:
        readiness.set_ready(loader())
    except Exception as exc:  # noqa: BLE001 - any load failure must show on /readyz
        logging.getLogger("fashion.startup").exception("loading failed")
        readiness.set_failed(f"{type(exc).__name__}: {exc}")
        return
    logging.getLogger("fashion.startup").info(json.dumps({
        "event": "ready", "pid": os.getpid(), "load_s": round(time.perf_counter() - started, 3),
        "detail": readiness.detail}))
