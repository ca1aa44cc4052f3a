"""Canonical CBOR: the one byte encoding of every signed message (DESIGN.md section 4).

Signatures are over the exact received bytes, so every value must have exactly one
encoding and the decoder accepts exactly those encodings:

* Allowed values: ``None``, ``bool``, ``int`` in ``[MIN_INT, MAX_UINT]`` (CBOR major types
  0/1, never bignum tags), ``bytes``, ``str``, ``list``/``tuple`` (both encode as arrays,
  decode as ``list``) and ``dict`` with ``str`` keys only. Types are checked with
  ``type(x) is``: subclasses (``IntEnum``, ``StrEnum``, ``OrderedDict``...) are refused,
  as are floats (a determinism hazard in replicated state), tags, sets and everything else.
* Nesting depth: a scalar is depth 0, ``[1]`` depth 1, ``{"a": [1]}`` depth 2. Both
  directions enforce ``max_depth`` (default ``MAX_NESTING_DEPTH``): a value we could not
  decode again must not be sent, and cbor2 6.3's encoder overflows the C stack (segfault)
  on very deep input, so the depth is checked before cbor2 sees the value.
* Map key order: cbor2's ``canonical=True`` sorts keys length-first, then bytewise (RFC
  7049 section 3.9). With text keys only, the encoded key header grows with the length,
  so this equals RFC 8949 section 4.2.1 bytewise order of the encoded keys. Mixing key
  types would break that equality: hence text keys only.
* ``decode`` checks the parsed value (types, depth, key order as received), re-encodes it
  and demands the same bytes. The re-encode refuses non-minimal integers and lengths,
  trailing bytes (cbor2's ``loads`` silently ignores them) and any tag that slipped past
  the hooks. It uses plain ``cbor2.dumps``: the key order is already checked, and sorting
  is most of the cost of ``canonical=True`` (decode: 8.3 -> 6.6 us on a 321-byte message).
"""

from __future__ import annotations

from typing import Any, NoReturn

import cbor2

from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.wire.limits import MAX_MESSAGE_SIZE, MAX_NESTING_DEPTH, MAX_UINT, MIN_INT

__all__ = ["decode", "encode"]

#: Longest excerpt of a cbor2 error message copied into a DecodeError. cbor2 quotes
#: offending keys, which come from the peer: never let a peer write large blobs to our logs.
_ERROR_DETAIL_CHARS = 80

#: Tags that cbor2 6.3 decodes itself (datetimes, bignums, decimals, regular expressions,
#: sets, shared and string references, self-describe 55799, ...) *before* ``tag_hook``
#: could see them. Found by probing tags 0..69999 (tests/test_cbor.py repeats the probe
#: against the installed cbor2). Each is overridden with a decoder that refuses it, so no
#: semantic decoding (e.g. compiling a peer-chosen regular expression, tag 35) ever runs.
#: Any tag missed here is still refused by the canonical re-encode check.
_CBOR2_BUILTIN_TAGS = (
    0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100,
    256, 258, 260, 261, 1004, 43000, 55799,
)  # fmt: skip


class _Refused(Exception):
    """A value outside the canonical subset; carries the path to it for the message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reversed_path: list[str] = []  # filled innermost-first while unwinding

    def describe(self) -> str:
        path = "".join(reversed(self.reversed_path))
        return f"{self.reason} at {path or '<root>'}"


class _TagRefused(Exception):
    """Raised from inside cbor2 hooks; cbor2 wraps it in a CBORDecodeError."""


def _refuse_tag(*_args: Any) -> NoReturn:
    raise _TagRefused("tags are not allowed")


_REFUSE_BUILTIN_TAGS = {tag: _refuse_tag for tag in _CBOR2_BUILTIN_TAGS}

#: Largest ``max_depth`` a caller may ask for. Both the validation walk (one Python frame
#: per level, default recursion limit 1000) and cbor2 recurse per level; 400 is cbor2's
#: own default and stays far from either stack limit.
_DEEPEST_SUPPORTED_DEPTH = 400


def _require_supported_depth(max_depth: int) -> None:
    if not 0 <= max_depth <= _DEEPEST_SUPPORTED_DEPTH:
        raise LocalError(f"max_depth must be within 0..{_DEEPEST_SUPPORTED_DEPTH}")


def _check(value: Any, depth_left: int, keys_in_order: bool) -> None:
    """Raise _Refused unless ``value`` lies in the canonical subset.

    ``keys_in_order``: also demand that every dict iterates in canonical key order. decode
    uses it on a freshly parsed value (dicts keep the wire order), which lets it re-encode
    with plain ``cbor2.dumps``: sorting is what makes ``canonical=True`` 3x slower.

    Hot path (every encode and every decode): one recursive function, ``type(x) is`` tests
    ordered by frequency. The error path is built only on failure (``try`` is free in 3.11).
    """
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or value is None:
        return
    if kind is int:
        if MIN_INT <= value <= MAX_UINT:
            return
        raise _Refused("integer out of range")
    if kind is dict:
        if depth_left == 0:
            raise _Refused("nesting too deep")
        previous_key: bytes | None = None
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused(f"map key of type {type(key).__name__}")
            if keys_in_order:
                # cbor2's canonical order: shorter encoded key first, then bytewise.
                encoded_key = key.encode()
                if previous_key is not None and (
                    len(encoded_key) < len(previous_key)
                    or (len(encoded_key) == len(previous_key) and encoded_key <= previous_key)
                ):
                    raise _Refused("map keys out of canonical order")
                previous_key = encoded_key
            item_kind = type(item)
            if item_kind is bytes or item_kind is str or (
                item_kind is int and MIN_INT <= item <= MAX_UINT
            ):
                continue  # inline the commonest leaves: most values of a message are these
            try:
                _check(item, depth_left - 1, keys_in_order)
            except _Refused as refused:
                refused.reversed_path.append(f"[{key[:_ERROR_DETAIL_CHARS]!r}]")
                raise
        return
    if kind is list or kind is tuple:
        if depth_left == 0:
            raise _Refused("nesting too deep")
        for index, item in enumerate(value):
            item_kind = type(item)
            if item_kind is bytes or item_kind is str:
                continue  # batches are long lists of envelope bytes
            try:
                _check(item, depth_left - 1, keys_in_order)
            except _Refused as refused:
                refused.reversed_path.append(f"[{index}]")
                raise
        return
    raise _Refused(f"value of type {kind.__name__}")


def encode(obj: Any, *, max_depth: int = MAX_NESTING_DEPTH) -> bytes:
    """Return the canonical encoding of ``obj``; LocalError if it is outside the subset."""
    _require_supported_depth(max_depth)
    try:
        _check(obj, max_depth, keys_in_order=False)
    except _Refused as refused:
        raise LocalError(f"cannot encode {refused.describe()}") from None
    try:
        return cbor2.dumps(obj, canonical=True)
    except UnicodeEncodeError:
        # The only failure left after _check: a str holding lone surrogates has no UTF-8.
        raise LocalError("cannot encode text that is not valid Unicode (lone surrogate)") from None


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = MAX_MESSAGE_SIZE,
    max_depth: int = MAX_NESTING_DEPTH,
) -> Any:
    """Parse one canonical CBOR item that fills ``data`` exactly.

    Raises DecodeError, and nothing else, for any content of ``data``. A ``data`` that is
    not bytes-like, or an unsupported ``max_depth``, is a bug in the caller: LocalError.
    """
    _require_supported_depth(max_depth)
    if type(data) is memoryview:
        size = data.nbytes
    elif type(data) is bytes or type(data) is bytearray:
        size = len(data)
    else:
        raise LocalError(f"decode expects bytes, not {type(data).__name__}")
    # Size first: an oversized input is refused without parsing a byte of it.
    if size > max_size:
        raise DecodeError(f"message of {size} bytes exceeds the limit of {max_size}")
    if size == 0:
        raise DecodeError("empty message")
    if type(data) is memoryview:
        data = data.tobytes()
    try:
        value = cbor2.loads(
            data,
            tag_hook=_refuse_tag,
            semantic_decoders=_REFUSE_BUILTIN_TAGS,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            # Only text/bytes map keys get hashed: no int/tuple keys chosen to collide.
            strict_hashable_types=True,
        )
    except Exception as exc:  # noqa: BLE001 -- any cbor2 failure is the peer's fault
        # RecursionError, MemoryError, ValueError... are all Exception subclasses; the
        # input is already bounded by max_size and cbor2 bounds the depth itself.
        detail = str(exc)[:_ERROR_DETAIL_CHARS]
        if isinstance(exc.__cause__, _TagRefused):  # cbor2 wraps what the hooks raise
            raise DecodeError(f"CBOR tags are not allowed ({detail})") from None
        raise DecodeError(f"malformed CBOR: {detail!r}") from None
    try:
        _check(value, max_depth, keys_in_order=True)
    except _Refused as refused:
        raise DecodeError(f"not canonical CBOR: {refused.describe()}") from None
    try:
        # Keys are already known to be in canonical order, and cbor2 always writes minimal
        # integers and lengths, so plain dumps gives the canonical bytes (tests pin this).
        canonical = cbor2.dumps(value)
    except Exception:  # noqa: BLE001 -- unreachable for checked values; keep the contract
        raise DecodeError("not canonical CBOR: cannot re-encode") from None
    if canonical != data:
        if len(canonical) < size and data[: len(canonical)] == canonical:
            raise DecodeError(f"{size - len(canonical)} trailing bytes after the message")
        raise DecodeError("not canonical CBOR: re-encoding gives different bytes")
    return value
