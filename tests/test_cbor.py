"""Canonical CBOR codec: RFC 8949 Appendix A vectors, refusals, and properties."""

from __future__ import annotations

import math
import random
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bftdeliberate.errors import DecodeError, LocalError
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_NESTING_DEPTH, MAX_UINT, MIN_INT

# --- RFC 8949 Appendix A: vectors inside our subset ------------------------------------

TWENTY_FIVE = list(range(1, 26))

ACCEPTED_VECTORS: list[tuple[Any, str]] = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),  # RFC's "\ud800\udd51": one code point, U+10151
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (TWENTY_FIVE, "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    (
        {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
        "a56161614161626142616361436164614461656145",
    ),
]


@pytest.mark.parametrize(("value", "hex_encoding"), ACCEPTED_VECTORS)
def test_rfc8949_vector_round_trips(value: Any, hex_encoding: str) -> None:
    assert cbor.encode(value).hex() == hex_encoding
    decoded = cbor.decode(bytes.fromhex(hex_encoding))
    assert decoded == value
    assert type(decoded) is type(value)


def test_tuples_encode_as_arrays_and_decode_as_lists() -> None:
    assert cbor.encode((1, (2, 3))) == cbor.encode([1, [2, 3]])
    assert cbor.decode(cbor.encode((1, (2, 3)))) == [1, [2, 3]]


def test_map_keys_sorted_length_first_then_bytewise() -> None:
    value = {"bb": 1, "\u00fc": 2, "a": 3, "z": 4, "zz": 5}
    # 1-byte keys first ("a" < "z"), then 2-byte keys bytewise: 6262 < 7a7a < c3bc.
    expected_order = ["a", "z", "bb", "zz", "\u00fc"]
    assert list(cbor.decode(cbor.encode(value))) == expected_order


def test_length_first_order_equals_rfc8949_bytewise_order_for_text_keys() -> None:
    keys = ["", "a", "b" * 23, "a" * 24, "c" * 255, "a" * 256, "\u00fc", "\u6c34", "zz"]
    encoded_keys = sorted(cbor2.dumps(key) for key in keys)  # RFC 8949 section 4.2.1
    assert [cbor2.loads(key) for key in encoded_keys] == list(
        cbor.decode(cbor.encode(dict.fromkeys(keys, 0)))
    )


@pytest.mark.parametrize(
    "value",
    [23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_UINT, -24, -25, -(2**32) - 1, MIN_INT]
    + ["x" * n for n in (23, 24, 255, 256, 65535, 65536)]
    + [b"x" * n for n in (23, 24, 255, 256, 65536)]
    + [[0] * n for n in (23, 24, 256)],
)
def test_plain_cbor2_dumps_is_minimal_at_every_length_boundary(value: Any) -> None:
    # decode re-encodes with plain cbor2.dumps (no canonical=True); that is only sound
    # while cbor2 writes the shortest integer and length heads everywhere.
    assert cbor2.dumps(value) == cbor.encode(value)
    assert cbor.decode(cbor.encode(value)) == value


# --- RFC 8949 Appendix A: vectors outside our subset -----------------------------------

REFUSED_VECTORS = {
    "float 0.0 half": "f90000",
    "float -0.0": "f98000",
    "float 1.1": "fb3ff199999999999a",
    "float 100000.0": "fa47c35000",
    "Infinity": "f97c00",
    "NaN": "f97e00",
    "-Infinity double": "fbfff0000000000000",
    "bignum 2**64 (tag 2)": "c249010000000000000000",
    "negative bignum (tag 3)": "c349010000000000000000",
    "small bignum (tag 2) in range": "c24101",
    "datetime string (tag 0)": "c074323031332d30332d32315432303a30343a30305a",
    "epoch datetime (tag 1)": "c11a514b67b0",
    "epoch datetime float (tag 1)": "c1fb41d452d9ec200000",
    "expected base16 (tag 23)": "d74401020304",
    "embedded CBOR (tag 24)": "d818456449455446",
    "URI (tag 32)": "d82076687474703a2f2f7777772e6578616d706c652e636f6d",
    "set (tag 258)": "d9010283010203",
    "self-describe (tag 55799)": "d9d9f700",
    "unknown tag 65536": "da0001000000",
    "unknown 8-byte tag": "dbffffffffffffffff00",
    "tag inside array": "8201c11a514b67b0",
    "tag inside map value": "a16161d74100",
    "shareable (tag 28)": "d81c8100",
    "string-ref namespace (tag 256)": "d9010080",
    "regexp (tag 35)": "d82363612a2a",
    "decimal (tag 4)": "c48221196ab3",
    "simple(16)": "f0",
    "simple(255)": "f8ff",
    "undefined": "f7",
    "indefinite bytes": "5f42010243030405ff",
    "indefinite text": "7f657374726561646d696e67ff",
    "indefinite empty array": "9fff",
    "indefinite nested arrays": "9f018202039f0405ffff",
    "indefinite map": "bf61610161629f0203ffff",
    "integer map keys": "a201020304",
    "byte-string map key": "a1410102",
    "array map key": "a1810102",
    "map map key": "a1a002",
    "duplicate keys": "a2616101616102",
    "duplicate keys, same value": "a2616101616101",
    "non-minimal 23": "1817",
    "non-minimal 0 in one byte": "1800",
    "non-minimal 1 in two bytes": "190001",
    "non-minimal 1 in four bytes": "1a00000001",
    "non-minimal 1 in eight bytes": "1b0000000000000001",
    "non-minimal -1": "3800",
    "non-minimal text length": "780161",
    "non-minimal bytes length": "590001ff",
    "non-minimal array length": "980101",
    "non-minimal map length": "b8016161 01".replace(" ", ""),
    "unsorted keys bytewise": "a2616201616101",
    "unsorted keys length-first": "a262616101616202",
    "trailing byte": "0101",
    "trailing item after map": "a0a0",
    "truncated array": "8201",
    "truncated text": "6461",
    "truncated integer": "1a0000",
    "lone break": "ff",
    "reserved additional info": "1c",
    "invalid UTF-8": "62c328",
    "UTF-8 encoded surrogate": "63eda080",
    "overlong UTF-8": "62c0af",
    "huge declared bytes length": "5bffffffffffffffff",
    "huge declared array length": "9bffffffffffffffff",
    "huge declared map length": "bbffffffffffffffff",
}


@pytest.mark.parametrize("hex_encoding", REFUSED_VECTORS.values(), ids=REFUSED_VECTORS.keys())
def test_refused_encodings_raise_decode_error(hex_encoding: str) -> None:
    with pytest.raises(DecodeError):
        cbor.decode(bytes.fromhex(hex_encoding))


def test_empty_input_is_refused() -> None:
    with pytest.raises(DecodeError, match="empty"):
        cbor.decode(b"")


def test_trailing_bytes_are_named() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        cbor.decode(b"\x01\x01")


def test_tags_are_named() -> None:
    with pytest.raises(DecodeError, match="tags are not allowed"):
        cbor.decode(bytes.fromhex("c11a514b67b0"))


def test_every_cbor2_builtin_tag_is_overridden() -> None:
    """Repeat the probe behind _CBOR2_BUILTIN_TAGS against the installed cbor2: a tag
    cbor2 decodes itself never reaches tag_hook. A new cbor2 built-in fails this test."""
    reached_hook: list[object] = []

    def record(*args: object) -> None:
        reached_hook.append(args)

    builtin = []
    for tag in range(70_000):
        head = cbor2.dumps(cbor2.CBORTag(tag, None))[:-1]  # tag head without the null
        reached_hook.clear()
        for content in (b"\x00", b"\x40", b"\x60", b"\x80"):
            try:
                cbor2.loads(head + content, tag_hook=record)
            except Exception:  # noqa: BLE001 -- only whether the hook ran matters
                pass
            if reached_hook:
                break
        if not reached_hook:
            builtin.append(tag)
    assert set(builtin) <= set(cbor._CBOR2_BUILTIN_TAGS)


@pytest.mark.parametrize("tag", cbor._CBOR2_BUILTIN_TAGS)
@pytest.mark.parametrize("content", [b"\x00", b"\x40", b"\x60", b"\x80", b"\xa0"])
def test_every_builtin_tag_is_refused_whatever_its_content(tag: int, content: bytes) -> None:
    encoded = cbor2.dumps(cbor2.CBORTag(tag, None))[:-1] + content
    with pytest.raises(DecodeError):
        cbor.decode(encoded)


def test_oversize_is_refused_before_parsing() -> None:
    garbage = b"\xff" * 11  # not CBOR at all: the size check must come first
    with pytest.raises(DecodeError, match="exceeds"):
        cbor.decode(garbage, max_size=10)
    assert cbor.decode(cbor.encode("x" * 8), max_size=10) == "x" * 8  # 10 bytes: fine


def nested_arrays(depth: int) -> bytes:
    return b"\x81" * depth + b"\x01"


def test_depth_limit_is_exact() -> None:
    assert cbor.decode(nested_arrays(MAX_NESTING_DEPTH)) is not None
    with pytest.raises(DecodeError):
        cbor.decode(nested_arrays(MAX_NESTING_DEPTH + 1))
    assert cbor.decode(nested_arrays(3), max_depth=3) == [[[1]]]
    with pytest.raises(DecodeError):
        cbor.decode(nested_arrays(4), max_depth=3)
    assert cbor.decode(b"\x01", max_depth=0) == 1
    with pytest.raises(DecodeError):
        cbor.decode(b"\x80", max_depth=0)


def test_depth_counts_maps_and_arrays() -> None:
    value = {"a": [1]}  # depth 2
    assert cbor.decode(cbor.encode(value), max_depth=2) == value
    with pytest.raises(DecodeError):
        cbor.decode(cbor.encode(value), max_depth=1)
    with pytest.raises(LocalError):
        cbor.encode(value, max_depth=1)


@pytest.mark.parametrize("opener", [b"\x81", b"\xa1\x61\x61"], ids=["arrays", "maps"])
def test_hundred_thousand_nested_containers_are_a_decode_error(opener: bytes) -> None:
    with pytest.raises(DecodeError):
        cbor.decode(opener * 100_000 + b"\x01")


def test_encode_refuses_deep_values_before_cbor2_sees_them() -> None:
    deep: Any = 1
    for _ in range(100_000):  # cbor2 6.3's encoder segfaults on this
        deep = [deep]
    with pytest.raises(LocalError, match="too deep"):
        cbor.encode(deep)


def test_decode_accepts_other_bytes_like_and_refuses_other_types() -> None:
    assert cbor.decode(bytearray(b"\x83\x01\x02\x03")) == [1, 2, 3]
    assert cbor.decode(memoryview(b"\x83\x01\x02\x03")) == [1, 2, 3]
    with pytest.raises(LocalError):
        cbor.decode("83010203")  # type: ignore[arg-type]
    with pytest.raises(LocalError):
        cbor.decode(b"\x01", max_depth=10_000)


def test_error_messages_are_short_and_do_not_dump_the_payload() -> None:
    huge_key = "k" * 100_000
    duplicate = b"\xa2" + (cbor2.dumps(huge_key) + b"\x01") * 2
    with pytest.raises(DecodeError) as caught:
        cbor.decode(duplicate, max_size=len(duplicate))
    assert len(str(caught.value)) < 200


# --- encode refusals -------------------------------------------------------------------


class Custom:
    pass


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        0.0,
        math.nan,
        {1: 2},
        {b"a": 1},
        {("a",): 1},
        {"ok": {2: "bad key"}},
        {1, 2},
        frozenset(),
        MAX_UINT + 1,
        MIN_INT - 1,
        [1, 2**70],
        Custom(),
        bytearray(b"x"),
        cbor2.CBORTag(1, 0),
        cbor2.undefined,
        "\ud800",
        {"\udc00": 1},
    ],
    ids=repr,
)
def test_encode_refuses_values_outside_the_subset(value: Any) -> None:
    with pytest.raises(LocalError):
        cbor.encode(value)


def test_encode_error_names_the_type_and_path() -> None:
    with pytest.raises(LocalError, match=r"float at \['a'\]\[1\]"):
        cbor.encode({"a": [1, 2.5]})


def test_encode_refuses_subclasses_of_allowed_types() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    with pytest.raises(LocalError, match="Color"):
        cbor.encode({"color": Color.RED})


# --- properties ------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=MIN_INT, max_value=MAX_UINT)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)


def as_decoded(value: Any) -> Any:
    """What decode returns for ``value``: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [as_decoded(item) for item in value]
    if isinstance(value, dict):
        return {key: as_decoded(item) for key, item in value.items()}
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


@settings(max_examples=500, deadline=None, derandomize=True)
@given(values)
def test_encode_decode_round_trip(value: Any) -> None:
    if depth_of(value) > MAX_NESTING_DEPTH:
        with pytest.raises(LocalError):
            cbor.encode(value)
        return
    encoded = cbor.encode(value)
    decoded = cbor.decode(encoded)
    assert decoded == as_decoded(value)
    assert cbor.encode(decoded) == encoded
    assert cbor2.dumps(value, canonical=True) == encoded


def mutate(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(4)
        if choice == 0 and buffer:
            index = rng.randrange(len(buffer))
            buffer[index] ^= 1 << rng.randrange(8)
        elif choice == 1 and buffer:
            del buffer[rng.randrange(len(buffer)) :]
        elif choice == 2:
            buffer.insert(rng.randrange(len(buffer) + 1), rng.randrange(256))
        elif buffer:
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    return bytes(buffer)


def decode_or_decode_error(data: bytes) -> None:
    """Any outcome but a value or a DecodeError fails the test (pytest shows it)."""
    try:
        value = cbor.decode(data)
    except DecodeError:
        return
    assert cbor.encode(value) == data  # whatever is accepted is canonical


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.binary(max_size=512))
def test_random_bytes_give_a_value_or_a_decode_error(data: bytes) -> None:
    decode_or_decode_error(data)


@settings(
    max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(values, st.randoms(use_true_random=False))
def test_mutated_encodings_give_a_value_or_a_decode_error(value: Any, rng: random.Random) -> None:
    try:
        encoded = cbor.encode(value)
    except LocalError:  # too deep for the default limit
        return
    decode_or_decode_error(mutate(encoded, rng))
