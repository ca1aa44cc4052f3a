"""Structured logging, the snapshot collector and the /metrics endpoint (loopback sockets only)."""

from __future__ import annotations

import io
import json
import logging
import re
from functools import partial

import pytest
import trio
import trio.testing
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.logging import RichHandler

from bftdeliberate import observability
from bftdeliberate.observability import (
    LOGGER_NAME,
    MAX_REQUEST_HEAD_BYTES,
    SnapshotCollector,
    configure_logging,
    log_event,
    metrics_registry,
    serve_metrics,
)

TIMEOUT = 10

SNAPSHOT = {
    "member": 0, "view": 3, "view_active": True, "last_executed": 120, "stable_checkpoint": 64,
    "state_digest": "ab" * 32,
    "committed_ops": 1234, "committed_batches": 20, "view_changes": 2, "state_transfers": 1,
    "rejected": {"bad-signature": 3, "malformed": 1},
    "send_queue": {"1": {"messages": 4, "bytes": 1234}, "client-0": {"messages": 0, "bytes": 0}},
    "send_dropped": {"1": 0},
    "request_queue": 7, "connections": 5,
    "handshakes_refused": {"unknown-key": 1},
    "verifications": 100, "verify_cache_hits": 40, "fsyncs": 55, "log_bytes": 4096,
    "messages_sent": 900, "bytes_sent": 90000, "messages_received": 800, "bytes_received": 80000,
}




class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --- logging -------------------------------------------------------------------------------------


def test_json_line_has_core_keys_view_seq_and_hex_bytes():
    out = io.StringIO()
    logger = configure_logging(member=2, stream=out)  # a StringIO is not a terminal: JSON
    log_event(logger, "info", "view-change", view=3, seq=10, digest=b"\x01\xab\xff")

    [line] = json_lines(out)
    assert list(line)[:6] == ["ts", "level", "event", "member", "view", "seq"]
    assert isinstance(line["ts"], float) and line["ts"] > 0
    assert line["level"] == "info"
    assert line["event"] == "view-change"
    assert line["member"] == 2
    assert (line["view"], line["seq"]) == (3, 10)
    assert line["digest"] == "01abff"


def test_json_values_are_always_serialisable():
    out = io.StringIO()
    logger = configure_logging(member="client-0", stream=out, json_lines=True)
    log_event(logger, "warning", "odd-values", nested={b"\x0a": [b"\x00", {2, 1}]},
              ratio=float("nan"), obj=object, member=9)

    [line] = json_lines(out)
    assert line["member"] == "client-0"
    assert line["field.member"] == 9  # a reserved key is never overwritten by a field
    assert line["nested"] == {"0a": ["00", [1, 2]]}
    assert line["ratio"] == "nan"
    assert line["obj"] == str(object)


def test_level_filter_child_loggers_and_exceptions():
    out = io.StringIO()
    logger = configure_logging(member=1, level="warning", stream=out)
    log_event(logger, "info", "filtered-out", seq=1)
    logging.getLogger(f"{LOGGER_NAME}.net").warning("peer %s slow", 3)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log_event(logger, "error", "failed", exc_info=True, seq=5)

    first, second = json_lines(out)
    assert first["event"] == "peer 3 slow" and first["member"] == 1 and first["level"] == "warning"
    assert second["event"] == "failed" and second["seq"] == 5
    assert "RuntimeError: boom" in second["exc"]


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError):
        configure_logging(member=0, level="loud", stream=io.StringIO())


def test_configure_is_idempotent():
    first, second = io.StringIO(), io.StringIO()
    configure_logging(member=0, stream=first)
    logger = configure_logging(member=0, stream=second)
    log_event(logger, "info", "once")

    assert len(logger.handlers) == 1
    assert logger.propagate is False
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["once"]


def test_terminal_gets_rich_key_value_rendering():
    out = TtyStream()
    logger = configure_logging(member=4, stream=out)
    [handler] = logger.handlers
    assert isinstance(handler, RichHandler)

    log_event(logger, "info", "commit", view=3, seq=10, digest=b"\xab\xcd")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "commit member=4 view=3 seq=10 digest=abcd" in text
    assert not text.lstrip().startswith("{")


# --- collector ------------------------------------------------------------------------------------


def samples(registry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset({"member": "0", **labels}.items())


def test_collector_exports_every_snapshot_field():
    got = samples(metrics_registry(lambda: SNAPSHOT))
    expected = {
        key("bftd_committed_ops_total"): 1234,
        key("bftd_committed_batches_total"): 20,
        key("bftd_view_changes_total"): 2,
        key("bftd_state_transfers_total"): 1,
        key("bftd_rejected_messages_total", reason="bad-signature"): 3,
        key("bftd_rejected_messages_total", reason="malformed"): 1,
        key("bftd_send_dropped_total", peer="1"): 0,
        key("bftd_handshakes_refused_total", reason="unknown-key"): 1,
        key("bftd_signature_verifications_total"): 100,
        key("bftd_verify_cache_hits_total"): 40,
        key("bftd_fsyncs_total"): 55,
        key("bftd_messages_sent_total"): 900,
        key("bftd_bytes_sent_total"): 90000,
        key("bftd_messages_received_total"): 800,
        key("bftd_bytes_received_total"): 80000,
        key("bftd_view"): 3,
        key("bftd_view_active"): 1,
        key("bftd_last_executed_seq"): 120,
        key("bftd_stable_checkpoint_seq"): 64,
        key("bftd_send_queue_messages", peer="1"): 4,
        key("bftd_send_queue_bytes", peer="1"): 1234,
        key("bftd_send_queue_messages", peer="client-0"): 0,
        key("bftd_send_queue_bytes", peer="client-0"): 0,
        key("bftd_request_queue_depth"): 7,
        key("bftd_connections"): 5,
        key("bftd_log_bytes"): 4096,
        key("bftd_state_digest_info", digest="ab" * 32): 1,
    }
    assert got == expected


def test_collector_types_and_missing_keys():
    text = generate_latest(metrics_registry(lambda: {"member": 2, "view": 5, "fsyncs": 1}))
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert set(families) == {"bftd_view", "bftd_fsyncs"}
    assert families["bftd_view"].type == "gauge"
    assert families["bftd_fsyncs"].type == "counter"
    assert families["bftd_view"].samples[0].labels == {"member": "2"}


def test_collector_reads_snapshot_at_scrape_time_and_skips_bad_values():
    state = {"member": 0, "view": 1, "connections": "many", "rejected": {"malformed": None}}
    registry = metrics_registry(lambda: state)
    assert samples(registry) == {key("bftd_view"): 1}
    state["view"] = 2
    assert samples(registry) == {key("bftd_view"): 2}


def test_collector_describe_does_not_call_snapshot():
    def snapshot():
        raise AssertionError("called at registration")

    names = {family.name for family in SnapshotCollector(snapshot).describe()}
    assert {"bftd_committed_ops", "bftd_send_queue_bytes", "bftd_view"} <= names
    metrics_registry(snapshot)


# --- HTTP endpoint --------------------------------------------------------------------------------


async def exchange(port: int, raw: bytes, *, half_close: bool = False) -> bytes:
    """Send ``raw`` on a fresh connection and return everything until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        if half_close:
            await stream.send_eof()
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body) or not body
    assert headers["connection"] == "close"
    return int(status), headers, body


async def get_status(port: int, raw: bytes, **kwargs) -> int:
    return parse_response(await exchange(port, raw, **kwargs))[0]


async def test_serves_metrics_not_found_and_method_not_allowed():
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_metrics, lambda: SNAPSHOT))

            status, headers, body = parse_response(
                await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
            assert status == 200
            assert headers["content-type"] == CONTENT_TYPE_LATEST
            assert b'bftd_view{member="0"} 3.0' in body
            assert b'bftd_rejected_messages_total{member="0",reason="malformed"} 1.0' in body

            status, headers, body = parse_response(
                await exchange(port, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"))
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0

            assert await get_status(port, b"GET / HTTP/1.1\r\n\r\n") == 404
            assert await get_status(port, b"GET /metricsx HTTP/1.1\r\n\r\n") == 404

            status, headers, _ = parse_response(
                await exchange(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))
            assert status == 405 and headers["allow"] == "GET, HEAD"
            nursery.cancel_scope.cancel()


GARBAGE = [
    b"\x00\xff\xfe garbage \x80\r\n\r\n",
    b"GET /metrics\r\n\r\n",
    b"GET  /metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/2.0\r\n\r\n",
    b"GET metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
    b"G(T /metrics HTTP/1.1\r\n\r\n",
]


async def test_malformed_requests_get_400_and_server_keeps_serving():
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_metrics, lambda: SNAPSHOT))
            for raw in GARBAGE:
                assert await get_status(port, raw) == 400, raw
                assert await get_status(port, b"GET /metrics HTTP/1.1\r\n\r\n") == 200
            # An unterminated head followed by end of input is malformed too.
            assert await get_status(port, b"GET /metr", half_close=True) == 400
            # A client that connects and leaves without a byte gets nothing, harmlessly.
            assert await exchange(port, b"", half_close=True) == b""
            assert await get_status(port, b"GET /metrics HTTP/1.1\r\n\r\n") == 200
            nursery.cancel_scope.cancel()


async def test_oversized_request_head_is_refused():
    padding = b"X-Pad: " + b"a" * MAX_REQUEST_HEAD_BYTES
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_metrics, lambda: SNAPSHOT))
            request = b"GET /metrics HTTP/1.1\r\n" + padding
            assert await get_status(port, request, half_close=True) == 431
            assert await get_status(port, request + b"\r\n\r\n") == 431
            fits = b"GET /metrics HTTP/1.1\r\nX: "
            fits += b"a" * (MAX_REQUEST_HEAD_BYTES - len(fits) - 4) + b"\r\n\r\n"
            assert len(fits) == MAX_REQUEST_HEAD_BYTES
            assert await get_status(port, fits) == 200
            nursery.cancel_scope.cancel()


async def test_failing_snapshot_gives_500_without_killing_the_server():
    calls = []

    def snapshot():
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("peer not ready")
        return SNAPSHOT

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_metrics, snapshot))
            assert await get_status(port, b"GET /metrics HTTP/1.1\r\n\r\n") == 500
            assert await get_status(port, b"GET /metrics HTTP/1.1\r\n\r\n") == 200
            nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed_after_the_timeout(monkeypatch):
    monkeypatch.setattr(observability, "REQUEST_TIMEOUT_SECONDS", 0.05)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_metrics, lambda: SNAPSHOT))
            assert await exchange(port, b"GET /metrics HTTP/1.1\r\n") == b""
            nursery.cancel_scope.cancel()


async def test_connections_beyond_the_cap_get_503():
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_metrics, lambda: SNAPSHOT, max_connections=1))
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            await trio.testing.wait_all_tasks_blocked()  # the server now holds `idle`
            assert await get_status(port, b"GET /metrics HTTP/1.1\r\n\r\n") == 503
            await idle.aclose()
            await trio.testing.wait_all_tasks_blocked()  # ... and has let it go
            assert await get_status(port, b"GET /metrics HTTP/1.1\r\n\r\n") == 200
            nursery.cancel_scope.cancel()


async def test_rejects_zero_connection_cap():
    with trio.fail_after(TIMEOUT), pytest.raises(ValueError):
        await serve_metrics(lambda: SNAPSHOT, max_connections=0)
