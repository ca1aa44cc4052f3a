"""The built-in key-value application: a deterministic ``StateMachine`` used by tests, the demo
and the benchmarks.

Operations and results are canonical CBOR maps:

* ``{"op": "put", "key": K, "value": V}`` -> ``{"ok": True, "previous": V_or_None}``
* ``{"op": "get", "key": K}`` -> ``{"ok": True, "value": V_or_None}``
* ``{"op": "delete", "key": K}`` -> ``{"ok": True, "existed": bool}``

Keys are text, values bytes. A malformed operation is a deterministic error result
(``{"ok": False, "error": ...}``), never an exception: an authorised but buggy client must
not be able to crash replicas.
"""

from __future__ import annotations

import hashlib

from bftdeliberate.errors import DecodeError
from bftdeliberate.pbft.app import ExecutionContext
from bftdeliberate.wire import cbor

#: Bounds keep one client from growing replicated state without limit per operation.
MAX_KEY_LENGTH = 256
MAX_VALUE_SIZE = 16 * 1024
MAX_KEYS = 1_000_000


def put(key: str, value: bytes) -> bytes:
    return cbor.encode({"op": "put", "key": key, "value": value})


def get(key: str) -> bytes:
    return cbor.encode({"op": "get", "key": key})


def delete(key: str) -> bytes:
    return cbor.encode({"op": "delete", "key": key})


def _error(reason: str) -> bytes:
    return cbor.encode({"ok": False, "error": reason})


class KeyValueStore:
    """An in-memory replicated dictionary of text keys to byte values."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._data)

    def read(self, key: str) -> bytes | None:
        """Local (unreplicated) read, for inspection and tests."""
        return self._data.get(key)

    def apply(self, operation: bytes, ctx: ExecutionContext) -> bytes:
        try:
            fields = cbor.decode(operation)
        except DecodeError:
            return _error("malformed-operation")
        if type(fields) is not dict:
            return _error("malformed-operation")
        op, key = fields.get("op"), fields.get("key")
        if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH:
            return _error("bad-key")
        if op == "get" and fields.keys() == {"op", "key"}:
            return cbor.encode({"ok": True, "value": self._data.get(key)})
        if op == "delete" and fields.keys() == {"op", "key"}:
            return cbor.encode({"ok": True, "existed": self._data.pop(key, None) is not None})
        if op == "put" and fields.keys() == {"op", "key", "value"}:
            value = fields["value"]
            if type(value) is not bytes or len(value) > MAX_VALUE_SIZE:
                return _error("bad-value")
            if key not in self._data and len(self._data) >= MAX_KEYS:
                return _error("store-full")
            previous = self._data.get(key)
            self._data[key] = value
            return cbor.encode({"ok": True, "previous": previous})
        return _error("unknown-operation")

    def snapshot(self) -> bytes:
        return cbor.encode(self._data)

    def restore(self, snapshot: bytes) -> None:
        data = cbor.decode(snapshot, max_size=len(snapshot))
        if type(data) is not dict or not all(type(v) is bytes for v in data.values()):
            raise DecodeError("not a key-value snapshot")
        self._data = data

    def digest(self) -> bytes:
        return hashlib.sha256(self.snapshot()).digest()
