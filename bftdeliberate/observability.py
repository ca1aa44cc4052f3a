"""Observability for a running peer: structured logs and a Prometheus scrape endpoint.

Logging. Everything logs through the stdlib logger ``"bftd"`` (and its children, e.g.
``"bftd.net"``). Callers use :func:`log_event`, which attaches key/value fields to the record;
:func:`configure_logging` installs exactly one handler that renders them either as one JSON
object per line (``ts``, ``level``, ``event``, ``member``, then the fields) for machines, or as
``event key=value ...`` through rich's ``RichHandler`` for a person at a terminal.

Metrics. The peer keeps its counters in plain Python objects (no metrics library on the hot
path) and exposes a zero-argument snapshot function returning a dict. :class:`SnapshotCollector`
turns that dict into ``bftd_*`` metric families at scrape time, and :func:`serve_metrics` serves
them over a deliberately small HTTP/1.1 server on trio: one request per connection, bounded
reads, a per-connection deadline, a cap on concurrent connections, loopback by default.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any, TextIO
from urllib.parse import urlsplit

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "LINGER_SECONDS",
    "LOGGER_NAME",
    "MAX_LINGER_BYTES",
    "MAX_METRICS_CONNECTIONS",
    "MAX_REQUEST_HEAD_BYTES",
    "REQUEST_TIMEOUT_SECONDS",
    "SnapshotCollector",
    "configure_logging",
    "log_event",
    "metrics_registry",
    "serve_metrics",
]

# ---------------------------------------------------------------------------------------------
# Structured logging
# ---------------------------------------------------------------------------------------------

LOGGER_NAME = "bftd"

# Keys every JSON line carries; a caller's field with one of these names is kept under
# "field.<name>" rather than overwriting it.
_RESERVED_KEYS = frozenset({"ts", "level", "event", "member", "exc"})
# Fields rendered first (in this order) when present, so the protocol position of an event is
# easy to spot in both renderings.
_LEADING_FIELDS = ("view", "seq")
_MAX_DEPTH = 8

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _parse_level(level: int | str) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and level.lower() in _LEVELS:
        return _LEVELS[level.lower()]
    raise ValueError(f"unknown log level {level!r}; expected one of {sorted(_LEVELS)}")


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable rendering of ``value``: bytes become hex, anything unknown a string."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if depth >= _MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {_json_key(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [_jsonable(v, depth + 1) for v in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return str(value)


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    rendered = _jsonable(key, _MAX_DEPTH)
    return rendered if isinstance(rendered, str) else json.dumps(rendered)


def _ordered_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if not isinstance(fields, Mapping):
        return {}
    ordered: dict[str, Any] = {}
    for key in _LEADING_FIELDS:
        if key in fields:
            ordered[key] = fields[key]
    for key, value in fields.items():
        key = _json_key(key)
        if key not in ordered:
            ordered[f"field.{key}" if key in _RESERVED_KEYS else key] = value
    return ordered


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ts, level, event, member, then the caller's fields."""

    def __init__(self, member: int | str | None) -> None:
        super().__init__()
        self.member = member

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "member": _jsonable(self.member),
        }
        for key, value in _ordered_fields(record).items():
            line[key] = _jsonable(value)
        if record.exc_info and record.exc_info != (None, None, None):
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


_BARE_VALUE = re.compile(r"[^\s=\"']+")


def _render_value(value: Any) -> str:
    rendered = _jsonable(value)
    if isinstance(rendered, str) and _BARE_VALUE.fullmatch(rendered):
        return rendered
    return json.dumps(rendered, separators=(",", ":"))


class KeyValueFormatter(logging.Formatter):
    """``event member=M key=value ...`` for a terminal (time and level come from rich)."""

    def __init__(self, member: int | str | None) -> None:
        super().__init__()
        self.member = member

    def formatMessage(self, record: logging.LogRecord) -> str:  # the stdlib's hook name
        parts = [record.getMessage()]
        if self.member is not None:
            parts.append(f"member={_render_value(self.member)}")
        parts.extend(f"{key}={_render_value(v)}" for key, v in _ordered_fields(record).items())
        return " ".join(parts)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def configure_logging(
    *,
    member: int | str | None,
    level: str = "info",
    json_lines: bool | None = None,
    stream: TextIO | None = None,
) -> logging.Logger:
    """Install the single ``bftd`` log handler and return the ``bftd`` logger.

    ``stream`` defaults to ``sys.stdout`` (looked up at call time). ``json_lines=None`` picks JSON
    lines when the stream is not a terminal and rich's readable rendering when it is. Calling
    this again replaces the handler it installed before instead of adding a second one. The
    logger stops propagating to the root logger so records are not printed twice.
    """
    if stream is None:
        stream = sys.stdout
    levelno = _parse_level(level)
    if json_lines is None:
        json_lines = not _is_terminal(stream)

    handler: logging.Handler
    if json_lines:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonLinesFormatter(member))
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=stream),
            show_path=False,
            markup=False,
            rich_tracebacks=True,
        )
        handler.setFormatter(KeyValueFormatter(member))
    handler._bftd_owned = True  # type: ignore[attr-defined]

    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        if getattr(old, "_bftd_owned", False):
            logger.removeHandler(old)
            old.close()
    logger.addHandler(handler)
    logger.setLevel(levelno)
    logger.propagate = False
    return logger


def log_event(
    logger: logging.Logger,
    level: int | str,
    event: str,
    /,
    *,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log ``event`` with key/value ``fields`` (e.g. ``view=3, seq=10``) at ``level``.

    Costs one ``isEnabledFor`` check when the level is filtered out. Values are rendered at
    output time: bytes as hex, unknown objects via ``str``.
    """
    levelno = _parse_level(level)
    if logger.isEnabledFor(levelno):
        logger.log(levelno, event, exc_info=exc_info, extra={"fields": fields}, stacklevel=2)


_log = logging.getLogger(f"{LOGGER_NAME}.metrics")

# ---------------------------------------------------------------------------------------------
# Prometheus metrics from a peer snapshot
# ---------------------------------------------------------------------------------------------

# (snapshot key, family name without "_total", help)
_COUNTERS = (
    ("committed_ops", "bftd_committed_ops", "Client operations executed after commit."),
    ("committed_batches", "bftd_committed_batches", "Request batches executed after commit."),
    ("view_changes", "bftd_view_changes", "Views this member has entered after a view change."),
    ("state_transfers", "bftd_state_transfers", "State transfers completed."),
    ("verifications", "bftd_signature_verifications", "Signature verifications performed."),
    ("verify_cache_hits", "bftd_verify_cache_hits", "Verifications answered from the cache."),
    ("fsyncs", "bftd_fsyncs", "fsync calls on the durable log."),
    ("messages_sent", "bftd_messages_sent", "Frames written to peers and clients."),
    ("bytes_sent", "bftd_bytes_sent", "Bytes written to peers and clients (framing included)."),
    ("messages_received", "bftd_messages_received", "Frames read from peers and clients."),
    ("bytes_received", "bftd_bytes_received", "Bytes read from peers and clients."),
)
# (snapshot key, family name without "_total", label name, help)
_LABELLED_COUNTERS = (
    ("rejected", "bftd_rejected_messages", "reason", "Messages dropped, by reason."),
    ("send_dropped", "bftd_send_dropped", "peer", "Outbound messages dropped on overflow."),
    ("handshakes_refused", "bftd_handshakes_refused", "reason", "Connections refused."),
    ("commit_events", "bftd_commit_events", "event",
     ("Commit-layer events of this member's submitter (intents, calls by action and result, "
      "retries, results by outcome, takeovers, watchdog ticks).")),
)
# (snapshot key, family name, help)
_GAUGES = (
    ("view", "bftd_view", "Current view number."),
    ("view_active", "bftd_view_active", "1 when the current view is active, 0 mid view change."),
    ("last_executed", "bftd_last_executed_seq", "Highest executed sequence number."),
    ("stable_checkpoint", "bftd_stable_checkpoint_seq", "Sequence of the stable checkpoint."),
    ("request_queue", "bftd_request_queue_depth", "Client requests waiting to be ordered."),
    ("connections", "bftd_connections", "Open peer and client connections."),
    ("log_bytes", "bftd_log_bytes", "Size of the durable log in bytes."),
)
# (field of each per-peer send_queue entry, family name, help)
_SEND_QUEUE = (
    ("messages", "bftd_send_queue_messages", "Messages queued for sending, per peer."),
    ("bytes", "bftd_send_queue_bytes", "Bytes queued for sending, per peer."),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class SnapshotCollector:
    """A prometheus_client collector reading a peer snapshot dict at every scrape.

    Keys missing from the snapshot produce no family; a value of the wrong type produces no
    sample. Every sample carries the ``member`` label (the snapshot's ``member``, else "").
    """

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        """The families this collector can produce (names only; never calls the snapshot)."""
        yield from self._families({})

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if not isinstance(snap, Mapping):
            raise TypeError(f"metrics snapshot must be a mapping, got {type(snap).__name__}")
        yield from self._families(snap, only_present=True)

    def _families(self, snap: Mapping[str, Any], only_present: bool = False) -> Iterator[Metric]:
        member = snap.get("member")
        member_label = "" if member is None else str(member)

        def wanted(key: str) -> bool:
            return not only_present or key in snap

        for key, name, doc in _COUNTERS:
            if wanted(key):
                family = CounterMetricFamily(name, doc, labels=["member"])
                self._add(family, [member_label], snap.get(key))
                yield family
        for key, name, label, doc in _LABELLED_COUNTERS:
            if wanted(key):
                family = CounterMetricFamily(name, doc, labels=["member", label])
                for label_value, value in self._items(snap.get(key)):
                    self._add(family, [member_label, label_value], value)
                yield family
        for key, name, doc in _GAUGES:
            if wanted(key):
                family = GaugeMetricFamily(name, doc, labels=["member"])
                self._add(family, [member_label], snap.get(key))
                yield family
        if wanted("send_queue"):
            queues = self._items(snap.get("send_queue"))
            for field, name, doc in _SEND_QUEUE:
                family = GaugeMetricFamily(name, doc, labels=["member", "peer"])
                for peer, entry in queues:
                    if isinstance(entry, Mapping):
                        self._add(family, [member_label, peer], entry.get(field))
                yield family
        if wanted("state_digest"):
            # An info-style gauge: the digest is a label, so members can be compared at a
            # glance (equal digest at equal bftd_last_executed_seq means equal state).
            family = GaugeMetricFamily("bftd_state_digest_info",
                                       "Digest of the application state (label), value 1.",
                                       labels=["member", "digest"])
            digest = snap.get("state_digest")
            if isinstance(digest, str):
                family.add_metric([member_label, digest], 1.0)
            yield family

    @staticmethod
    def _items(value: Any) -> list[tuple[str, Any]]:
        if not isinstance(value, Mapping):
            return []
        return [(str(k), v) for k, v in value.items()]

    @staticmethod
    def _add(family: Metric, labels: list[str], value: Any) -> None:
        number = _number(value)
        if number is not None:
            family.add_metric(labels, number)  # type: ignore[attr-defined]


def metrics_registry(snapshot: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    """A fresh registry (not prometheus_client's global one) holding one SnapshotCollector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return registry


# ---------------------------------------------------------------------------------------------
# Minimal HTTP/1.1 scrape endpoint
# ---------------------------------------------------------------------------------------------

MAX_REQUEST_HEAD_BYTES = 8 * 1024  # request line + headers; more is answered with 431
REQUEST_TIMEOUT_SECONDS = 10.0  # whole connection: read the request and write the answer
LINGER_SECONDS = 1.0  # after answering, drain unread input this long before closing
MAX_LINGER_BYTES = 64 * 1024  # ... and at most this much of it
MAX_METRICS_CONNECTIONS = 16  # concurrent connections; more are answered with 503
_RECEIVE_CHUNK = 4096

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HTTP_VERSION = re.compile(r"HTTP/1\.[01]")
_BAD_HEADER_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_METRICS_PATH = "/metrics"
_ALLOWED_METHODS = ("GET", "HEAD")


class _HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _response(
    status: int,
    body: bytes | None = None,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    reason = _REASONS[status]
    if body is None:
        body = f"{status} {reason}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


async def _read_head(stream: trio.abc.ReceiveStream) -> bytes | None:
    """The request head without its blank line; None if the peer closed before sending data."""
    buffer = bytearray()
    searched = 0
    while True:
        end = buffer.find(b"\r\n\r\n", max(0, searched - 3))
        if end >= 0:
            if end + 4 > MAX_REQUEST_HEAD_BYTES:
                raise _HttpError(431)
            return bytes(buffer[:end])
        if len(buffer) >= MAX_REQUEST_HEAD_BYTES:
            raise _HttpError(431)
        searched = len(buffer)
        chunk = await stream.receive_some(_RECEIVE_CHUNK)
        if not chunk:
            if buffer:
                raise _HttpError(400)
            return None
        buffer += chunk


def _parse_head(head: bytes) -> tuple[str, str]:
    """(method, path) of a syntactically valid HTTP/1.x request head, else _HttpError(400)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _HttpError(400) from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _HttpError(400)
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _HTTP_VERSION.fullmatch(version):
        raise _HttpError(400)
    if not target or any(ch <= " " or ch == "\x7f" for ch in target):
        raise _HttpError(400)
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or _BAD_HEADER_CHARS.search(value):
            raise _HttpError(400)
    if target.startswith("/"):
        path = target.partition("?")[0]
    elif target.lower().startswith(("http://", "https://")):
        path = urlsplit(target).path or "/"
    else:
        raise _HttpError(400)
    return method, path


class _MetricsServer:
    def __init__(self, registry: CollectorRegistry, max_connections: int) -> None:
        self.registry = registry
        self.max_connections = max_connections
        self.active = 0

    def route(self, method: str, path: str) -> bytes:
        if path != _METRICS_PATH:
            return _response(404)
        if method not in _ALLOWED_METHODS:
            return _response(405, headers=[("Allow", ", ".join(_ALLOWED_METHODS))])
        try:
            body = generate_latest(self.registry)
        except Exception:  # noqa: BLE001 - the peer's snapshot code must not kill the endpoint
            _log.exception("metrics snapshot failed")
            return _response(500)
        return _response(200, body, content_type=CONTENT_TYPE_LATEST, head_only=method == "HEAD")

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            if self.active >= self.max_connections:
                with trio.move_on_after(REQUEST_TIMEOUT_SECONDS):
                    await _answer(stream, _response(503))
                return
            self.active += 1
            try:
                with trio.move_on_after(REQUEST_TIMEOUT_SECONDS):
                    await self._serve_one(stream)
            finally:
                self.active -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away; nothing to answer
        except Exception:  # noqa: BLE001 - one bad connection must never take the endpoint down
            _log.exception("metrics connection failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        try:
            head = await _read_head(stream)
            if head is None:
                return
            method, path = _parse_head(head)
            response = self.route(method, path)
        except _HttpError as error:
            log_event(_log, "debug", "metrics-bad-request", status=error.status)
            response = _response(error.status)
        await _answer(stream, response)


async def _answer(stream: trio.SocketStream, response: bytes) -> None:
    """Send ``response``, half-close, then briefly drain what the client is still sending.

    Closing a socket with unread input makes the kernel send RST, which can destroy the answer
    before the client has read it (a refused oversized head, a request racing a 503).
    """
    await stream.send_all(response)
    await stream.send_eof()
    with trio.move_on_after(LINGER_SECONDS):
        drained = 0
        while drained < MAX_LINGER_BYTES:
            chunk = await stream.receive_some(_RECEIVE_CHUNK)
            if not chunk:
                break
            drained += len(chunk)


async def serve_metrics(
    collect: Callable[[], Mapping[str, Any]],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_connections: int = MAX_METRICS_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` from ``collect()`` snapshots until cancelled.

    Binds ``host`` (loopback unless told otherwise) and reports the bound port through
    ``task_status.started(port)``; use ``port=0`` for an ephemeral port. If ``host`` resolves to
    several addresses the port of the first listener is reported, so pass a literal address
    together with ``port=0``. Each connection carries one request and is then closed.
    """
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    server = _MetricsServer(metrics_registry(collect), max_connections)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, port, host=host))
        bound_port = listeners[0].socket.getsockname()[1]
        log_event(_log, "info", "metrics-listening", host=host, port=bound_port)
        task_status.started(bound_port)
