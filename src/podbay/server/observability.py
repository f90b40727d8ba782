"""The service's observability: a request id on every response, one structured log line per request and per pod
lifecycle event, and Prometheus metrics at `GET /metrics`.

**Request ids.** A client may send `X-Request-Id` (1-64 characters of letters, digits, `.`, `_`, `-`): the
service keeps it; any other value, or none, gets a fresh one. Every response carries it back, and every log
line written while serving the request (pod events included) names it.

**Logs.** Logger `podbay.access`: one line per request (request id, tenant, method, route template, status,
duration); logger `podbay.events`: one line per pod lifecycle event (request id if a request caused it, tenant,
pod id, event). `podbay serve --log-format json` writes each as one JSON object per line.

**Metrics.** The text exposition format, written here (a few counters, gauges and one histogram need no
dependency). Never labelled by tenant, pod id or raw path, so any reader learns counts, not whose they are.
Who may read them: a client on the loopback interface (the host's own Prometheus, or an SSH tunnel), or
anyone presenting `Authorization: Bearer $PODBAY_METRICS_TOKEN` when the operator set that variable; everyone
else gets 404, as for a route that does not exist. A reverse proxy on the same host makes every client look
local: block /metrics there, or set PODBAY_METRICS_TOKEN.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from podbay.errors import NotFound, PodbayError
from podbay.models import PodState
from podbay.platform import AsyncPlatform
from podbay.pool.warm import PoolReport
from podbay.postmortem import SNAPSHOT_PREFIX, PodEvent
from podbay.wire import REQUEST_ID

REQUEST_ID_HEADER = "X-Request-Id"
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
METRICS_TOKEN_VARIABLE = "PODBAY_METRICS_TOKEN"
CREATE_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

request_id = REQUEST_ID  # also read by the error shape (podbay.wire.error_body)
# The request being served (its state gets the tenant once the token is checked): names the tenant of a pod's
# events before the registry records the pod as the tenant's (its "created" event).
request_state: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "podbay_request_state", default=None
)
access_log = logging.getLogger("podbay.access")
events_log = logging.getLogger("podbay.events")


def request_id_of(given: str | None) -> str:
    """The client's id if it is sane (bounded, no spaces or control characters), else a fresh one."""
    if given is not None and CLIENT_REQUEST_ID.match(given):
        return given
    return "req_" + secrets.token_hex(8)


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1


class Metrics:
    """What the service counts; `render` writes it with the platform's current gauges."""

    def __init__(self) -> None:
        self.http_requests: Counter[tuple[str, str, str]] = Counter()  # (method, route template, status)
        self.errors: Counter[str] = Counter()  # by error type (the error shape's `type`)
        self.pod_events: Counter[str] = Counter()
        self.create_seconds: dict[str, Histogram] = {}  # by origin (pool, clone, boot, snapshot, fork)

    def observe_event(self, event: PodEvent) -> None:
        self.pod_events[event.kind] += 1
        if event.kind == "created" and event.duration_s is not None:
            self.create_seconds.setdefault(event.detail, Histogram(CREATE_BUCKETS_S)).observe(event.duration_s)

    def render(self, platform: AsyncPlatform) -> str:
        lines: list[str] = []
        states = Counter(info.state.value for info in platform.list())
        family(lines, "podbay_pods", "gauge", "pods this server holds, by state")
        for state in PodState:
            sample(lines, "podbay_pods", states[state.value], state=state.value)
        family(lines, "podbay_pod_events_total", "counter", "pod lifecycle events, by kind (failed: pods that failed)")
        for kind in sorted({*self.pod_events, "created", "ended", "failed"}):
            sample(lines, "podbay_pod_events_total", self.pod_events[kind], kind=kind)
        family(lines, "podbay_pod_create_seconds", "histogram", "time to create a pod, by how it was obtained")
        for origin, histogram in sorted(self.create_seconds.items()):
            for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
                sample(lines, "podbay_pod_create_seconds_bucket", count, path=origin, le=_number(bound))
            sample(lines, "podbay_pod_create_seconds_bucket", histogram.count, path=origin, le="+Inf")
            sample(lines, "podbay_pod_create_seconds_sum", histogram.sum, path=origin)
            sample(lines, "podbay_pod_create_seconds_count", histogram.count, path=origin)
        self._render_pools(lines, platform)
        family(lines, "podbay_http_requests_total", "counter", "HTTP requests, by method, route template and status")
        for (method, route, status), count in sorted(self.http_requests.items()):
            sample(lines, "podbay_http_requests_total", count, method=method, route=route, status=status)
        family(lines, "podbay_errors_total", "counter", "error answers, by podbay error type")
        for kind, count in sorted(self.errors.items()):
            sample(lines, "podbay_errors_total", count, type=kind)
        return "\n".join(lines) + "\n"

    def _render_pools(self, lines: list[str], platform: AsyncPlatform) -> None:
        reports = platform.pools.report()
        counts: list[tuple[str, str, str, Callable[[PoolReport], float]]] = [
            ("podbay_pool_size", "gauge", "warm pool target size", lambda report: report["size"]),
            ("podbay_pool_idle", "gauge", "warm pool members ready to be claimed", lambda report: report["idle"]),
            ("podbay_pool_claims_total", "counter", "claims on the warm pool", lambda report: report["claims"]),
            ("podbay_pool_hits_total", "counter", "claims that got a warm member", lambda report: report["hits"]),
        ]
        for name, kind, what, value in counts:
            family(lines, name, kind, what)
            for report in reports:
                sample(lines, name, value(report), **_pool_labels(report["shape"]))
        family(lines, "podbay_pool_hit_rate", "gauge", "hits / claims of the warm pool (NaN before any claim)")
        for report in reports:
            rate = report["hit_rate"]
            sample(lines, "podbay_pool_hit_rate", math.nan if rate is None else rate, **_pool_labels(report["shape"]))


def _pool_labels(shape: Any) -> dict[str, str]:
    fields = shape if isinstance(shape, dict) else vars(shape)
    return {key: str(fields[key]) for key in ("backend", "vcpus", "memory_mib") if key in fields}


def family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def sample(lines: list[str], name: str, value: float, **labels: str) -> None:
    rendered = ",".join(f'{key}="{_escaped(str(text))}"' for key, text in labels.items())
    lines.append(f"{name}{{{rendered}}} {_number(value)}" if rendered else f"{name} {_number(value)}")


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def may_read_metrics(request: Request) -> bool:
    """Loopback clients, or the holder of PODBAY_METRICS_TOKEN when the operator set it (see the docstring)."""
    expected = os.environ.get(METRICS_TOKEN_VARIABLE)
    if expected:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), expected.encode())
    return request.client is not None and request.client.host in LOOPBACK


def metrics_response(request: Request, metrics: Metrics, platform: AsyncPlatform) -> Response:
    if not may_read_metrics(request):
        raise NotFound(f"no route {request.method} {request.url.path}; see docs/api.md")
    return Response(metrics.render(platform), media_type="text/plain; version=0.0.4; charset=utf-8")


def install(app: FastAPI, metrics: Metrics) -> None:
    """The request-id, access-log and HTTP-metrics middleware, and error counting around the app's handlers
    (installed after podbay.server.errors.install, whose handlers it wraps)."""
    unexpected = _counting(app.exception_handlers[Exception], metrics)
    for exc_class, handler in list(app.exception_handlers.items()):
        app.exception_handlers[exc_class] = unexpected if exc_class is Exception else _counting(handler, metrics)
    app.add_middleware(ObservedRequests, metrics=metrics, unexpected=unexpected)


class ObservedRequests:
    """Plain ASGI middleware (not BaseHTTPMiddleware, which would sit between a streamed response and the
    client's disconnect): the request id, the response's status, one access line and the HTTP metrics."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, unexpected: Callable[[Request, Exception], Awaitable[Response]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.unexpected = unexpected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(Headers(scope=scope).get(REQUEST_ID_HEADER))
        state: dict[str, Any] = scope.setdefault("state", {})  # Request.state's storage: routes put the tenant there
        tokens = request_id.set(rid), request_state.set(state)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # the catch-all handler runs outside this middleware: run it here
            if response_started:
                raise
            response = await self.unexpected(Request(scope), exc)
            await response(scope, receive, send_with_id)
        finally:
            request_id.reset(tokens[0])
            request_state.reset(tokens[1])
            self._observed(scope, rid, status, state.get("tenant"), time.perf_counter() - started)

    def _observed(self, scope: Scope, rid: str, status: int, tenant: str | None, took_s: float) -> None:
        method = str(scope["method"])
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.http_requests[(method, route, str(status))] += 1
        access_log.info(
            "%s %s %s",
            method,
            route,
            status,
            extra={
                "request_id": rid,
                "tenant": tenant,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(took_s * 1000, 3),
            },
        )


def _counting(
    handler: Callable[[Request, Exception], Any], metrics: Metrics
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """`handler`, counting each error it answers by type."""

    async def counting(request: Request, exc: Exception) -> Response:
        metrics.errors[type(exc).__name__ if isinstance(exc, PodbayError) else _kind(exc)] += 1
        response: Response = await handler(request, exc)
        return response

    return counting


def _kind(exc: Exception) -> str:
    """Non-podbay exceptions as the error shape names them (validation is InvalidSpec; the rest by status)."""
    name = type(exc).__name__
    return {"RequestValidationError": "InvalidSpec", "HTTPException": "HTTPException"}.get(name, "PodbayError")


def pod_event_listener(
    metrics: Metrics, owner_of: Callable[[str], str | None], on_kept_snapshot: Callable[[str, str], None]
) -> Callable[[PodEvent], None]:
    """Count and log each pod event (naming the tenant and the request that caused it); a keep_on_failure
    snapshot becomes its tenant's, so the tenant can restore it."""

    def listener(event: PodEvent) -> None:
        metrics.observe_event(event)
        serving = request_state.get()
        tenant = owner_of(event.pod_id) or (serving.get("tenant") if serving is not None else None)
        if event.kind == "snapshot" and event.detail == SNAPSHOT_PREFIX + event.pod_id and tenant is not None:
            on_kept_snapshot(event.detail, tenant)
        events_log.info(
            "pod %s %s %s",
            event.pod_id,
            event.kind,
            event.detail,
            extra={
                "request_id": request_id.get(),
                "tenant": tenant,
                "pod_id": event.pod_id,
                "event": event.kind,
                "detail": event.detail,
            },
        )

    return listener


STRUCTURED_FIELDS = ("request_id", "tenant", "pod_id", "event", "detail", "method", "route", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the structured fields a record carries."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            document["request_id"] = rid
        for field in STRUCTURED_FIELDS[1:]:
            value = getattr(record, field, None)
            if value is not None:
                document[field] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None) or request_id.get()
        return f"{line} request_id={rid}" if rid else line


def configure_logging(log_format: str, level: str) -> None:
    """The root logger's one handler on stderr, as `podbay serve --log-format json|text` asks."""
    handler = logging.StreamHandler()
    text = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if log_format == "json" else text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
