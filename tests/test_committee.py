"""The genesis manifest: derived sizes, digest, validation messages and the keystore."""

from __future__ import annotations

import copy
import json
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bftdeliberate.committee import (
    MANIFEST_FILE_NAME,
    ROLES,
    Committee,
    init_keystore,
    load_committee,
    make_committee,
    save_committee,
)
from bftdeliberate.crypto import PrivateKey, Verifier, load_private_key, public_key_to_ssh
from bftdeliberate.errors import ConfigError, LocalError

Manifest = dict[str, Any]


def _committee(n: int = 4, clients: int = 1, seed: int = 1) -> Committee:
    committee, _member_keys, _client_keys = make_committee(
        n, clients=clients, rng=random.Random(seed)
    )
    return committee


def _manifest(n: int = 4, clients: int = 2) -> Manifest:
    """A valid manifest as the JSON data a user would edit."""
    manifest: Manifest = json.loads(_committee(n, clients).to_json())
    return manifest


def _fresh_key_line(seed: int) -> str:
    return public_key_to_ssh(PrivateKey.generate(random.Random(seed)).public_key)


@pytest.mark.parametrize(
    ("n", "f", "quorum", "reply_quorum"),
    [(4, 1, 3, 2), (5, 1, 3, 2), (7, 2, 5, 3), (10, 3, 7, 4)],
)
def test_derived_sizes(n: int, f: int, quorum: int, reply_quorum: int) -> None:
    committee = _committee(n)
    assert (committee.n, committee.f, committee.quorum, committee.reply_quorum) == (
        n,
        f,
        quorum,
        reply_quorum,
    )


def test_make_committee_shape_and_keys() -> None:
    committee, member_keys, client_keys = make_committee(
        4, clients=2, rng=random.Random(5), host="10.0.0.1", base_port=9000
    )
    assert [m.name for m in committee.members] == [f"agent-{i}" for i in range(4)]
    assert [m.address for m in committee.members] == [f"10.0.0.1:{9000 + i}" for i in range(4)]
    assert all(set(m.roles) == ROLES for m in committee.members)
    assert [m.public_key_bytes for m in committee.members] == [k.public_key for k in member_keys]
    assert sorted(client_keys) == ["client-0", "client-1"]
    # The keys returned are the committee's: a member's signature verifies under its entry.
    signature = member_keys[2].sign(committee.digest, "PREPARE", b"x")
    public_key = committee.member_public_key(2)
    assert public_key is not None
    assert Verifier().verify(public_key, committee.digest, "PREPARE", b"x", signature)


def test_make_committee_port_zero_for_all_members_by_default() -> None:
    assert {m.address for m in _committee().members} == {"127.0.0.1:0"}


def test_make_committee_is_deterministic_with_an_rng() -> None:
    assert _committee(seed=3).digest == _committee(seed=3).digest
    assert _committee(seed=3).digest != _committee(seed=4).digest


def test_make_committee_too_small_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 4 members"):
        make_committee(3)


def test_digest_is_stable_across_a_json_round_trip(tmp_path: Path) -> None:
    committee = _committee(clients=2)
    path = tmp_path / "committee.json"
    save_committee(committee, path)
    loaded = load_committee(path)
    assert loaded == committee
    assert loaded.digest == committee.digest
    assert len(committee.digest) == 32
    assert Committee.model_validate_json(committee.to_json()).digest == committee.digest


def _recomment_key(member: dict[str, Any]) -> None:
    key_type, encoded, _comment = member["public_key"].split()
    member["public_key"] = f"{key_type} {encoded} renamed"


_MEMBER_CHANGES: list[tuple[str, Callable[[Manifest], None]]] = [
    ("committee_id", lambda m: m.update(committee_id="other")),
    ("name", lambda m: m["members"][3].update(name="agent-x")),
    ("address", lambda m: m["members"][1].update(address="127.0.0.1:1")),
    ("roles", lambda m: m["members"][0].update(roles=["vote"])),
    ("public_key", lambda m: m["members"][2].update(public_key=_fresh_key_line(99))),
    ("key comment", lambda m: _recomment_key(m["members"][2])),
    ("client", lambda m: m["clients"].pop()),
    ("role order", lambda m: m["members"][0].update(roles=["vote", "audit"])),
]


@pytest.mark.parametrize(
    "change", [change for _name, change in _MEMBER_CHANGES], ids=[n for n, _ in _MEMBER_CHANGES]
)
def test_digest_changes_when_anything_changes(change: Callable[[Manifest], None]) -> None:
    manifest = _manifest()
    original = Committee.model_validate_json(json.dumps(manifest))
    changed = copy.deepcopy(manifest)
    change(changed)
    assert Committee.model_validate_json(json.dumps(changed)).digest != original.digest


def test_model_copy_with_update_revalidates_and_recomputes_the_digest() -> None:
    committee = _committee()
    renamed = committee.model_copy(update={"committee_id": "renamed"})
    assert renamed.digest != committee.digest
    with pytest.raises(ValueError, match="at least 4 members"):
        committee.model_copy(update={"members": committee.members[:3]})


def _drop_last_member(m: Manifest) -> None:
    m["members"].pop()


def _duplicate_id(m: Manifest) -> None:
    m["members"][2]["id"] = 1


def _gap_in_ids(m: Manifest) -> None:
    m["members"][3]["id"] = 7


def _swap_ids(m: Manifest) -> None:
    m["members"][0]["id"], m["members"][1]["id"] = 1, 0


def _duplicate_member_key(m: Manifest) -> None:
    m["members"][3]["public_key"] = m["members"][0]["public_key"]


def _client_reuses_member_key(m: Manifest) -> None:
    m["clients"][1]["public_key"] = m["members"][2]["public_key"]


def _unknown_role(m: Manifest) -> None:
    m["members"][2]["roles"] = ["vote", "admin"]


def _duplicate_role(m: Manifest) -> None:
    m["members"][0]["roles"] = ["vote", "vote"]


def _malformed_key(m: Manifest) -> None:
    m["members"][1]["public_key"] = "ssh-ed25519 AAAA!"


def _rsa_key(m: Manifest) -> None:
    m["members"][1]["public_key"] = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"


def _bad_address(m: Manifest) -> None:
    m["members"][0]["address"] = "localhost"


def _port_out_of_range(m: Manifest) -> None:
    m["members"][0]["address"] = "localhost:65536"


def _duplicate_name(m: Manifest) -> None:
    m["members"][1]["name"] = "agent-0"


def _duplicate_client(m: Manifest) -> None:
    m["clients"][1]["id"] = "client-0"


def _client_id_with_space(m: Manifest) -> None:
    m["clients"][0]["id"] = "client 0"


def _unsupported_version(m: Manifest) -> None:
    m["version"] = 2


def _unknown_field(m: Manifest) -> None:
    m["members"][0]["weight"] = 2


def _string_id(m: Manifest) -> None:
    m["members"][0]["id"] = "0"


def _missing_address(m: Manifest) -> None:
    del m["members"][3]["address"]


INVALID_MANIFESTS: list[tuple[Callable[[Manifest], None], str]] = [
    (_drop_last_member, "a committee needs at least 4 members (n = 3f+1, f >= 1); got 3"),
    (_duplicate_id, "duplicate member id 1"),
    (_gap_in_ids, "member ids must be 0..3 in order"),
    (_swap_ids, "position 0 has id 1"),
    (_duplicate_member_key, "member 3 reuses the public key of member 0"),
    (_client_reuses_member_key, "client 'client-1' reuses the public key of member 2"),
    (
        _unknown_role,
        "members.2.roles: unknown role 'admin' (known: audit, human, propose, submit, vote)",
    ),
    (_duplicate_role, "members.0.roles: a role is listed twice"),
    (_malformed_key, "members.1.public_key: malformed public key: the key is not valid base64"),
    (_rsa_key, "members.1.public_key: malformed public key: unsupported key type 'ssh-rsa'"),
    (_bad_address, "members.0.address: address 'localhost' is not 'host:port'"),
    (_port_out_of_range, "members.0.address: address port 65536 is not in 0..65535"),
    (_duplicate_name, "duplicate member name 'agent-0'"),
    (_duplicate_client, "duplicate client id 'client-0'"),
    (_client_id_with_space, "clients.0.id: client id 'client 0' must be printable"),
    (_unsupported_version, "version: manifest version 2 is not supported"),
    (_unknown_field, "members.0.weight: Extra inputs are not permitted"),
    (_string_id, "members.0.id: Input should be a valid integer"),
    (_missing_address, "members.3.address: Field required"),
]


@pytest.mark.parametrize(
    ("break_manifest", "problem"),
    INVALID_MANIFESTS,
    ids=[b.__name__.lstrip("_") for b, _ in INVALID_MANIFESTS],
)
def test_invalid_manifest_is_a_one_line_config_error(
    tmp_path: Path, break_manifest: Callable[[Manifest], None], problem: str
) -> None:
    manifest = _manifest()
    break_manifest(manifest)
    path = tmp_path / "committee.json"
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ConfigError) as caught:
        load_committee(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"version": 1,', "invalid JSON"),
        (b"", "invalid JSON"),
        (b"[]", "Input should be an object"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_unparsable_manifest_is_a_one_line_config_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "committee.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_committee(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_missing_manifest_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError) as caught:
        load_committee(path)
    assert str(caught.value) == f"{path}: no such file"


def test_lookups() -> None:
    committee, member_keys, client_keys = make_committee(5, clients=2, rng=random.Random(2))
    assert committee.client_public_key("client-1") == client_keys["client-1"].public_key
    assert committee.client_public_key("client-9") is None
    # A member's agent signs requests under the member's name, with the member's key.
    assert committee.client_public_key("agent-0") == member_keys[0].public_key
    assert committee.member_named("agent-3") is committee.member(3)
    assert committee.member_named("client-1") is None
    assert committee.member_public_key(4) == member_keys[4].public_key
    assert committee.member_public_key(5) is None
    assert committee.member_public_key(-1) is None
    assert committee.member(3).name == "agent-3"
    with pytest.raises(LocalError):
        committee.member(5)
    assert [committee.primary(v) for v in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    with pytest.raises(LocalError):
        committee.primary(-1)


def test_save_committee_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "committee.json"
    save_committee(_committee(seed=1), path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        save_committee(_committee(seed=2), path)
    assert path.read_bytes() == before
    save_committee(_committee(seed=2), path, overwrite=True)
    assert load_committee(path).digest == _committee(seed=2).digest


def test_init_keystore_writes_private_keys_and_manifest(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    committee = init_keystore(directory, 4, clients=2, base_port=7100)
    key_names = [f"agent-{i}.key" for i in range(4)] + ["client-0.key", "client-1.key"]
    assert sorted(p.name for p in directory.iterdir()) == sorted([*key_names, MANIFEST_FILE_NAME])
    for name in key_names:
        assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o600
    assert load_committee(directory / MANIFEST_FILE_NAME) == committee
    assert committee.committee_id.startswith("committee-")
    assert committee.members[3].address == "127.0.0.1:7103"
    for member in committee.members:
        assert load_private_key(directory / f"{member.name}.key").public_key == (
            member.public_key_bytes
        )
    assert load_private_key(directory / "client-1.key").public_key == (
        committee.client_public_key("client-1")
    )


def test_init_keystore_refuses_to_run_twice_and_keeps_existing_keys(tmp_path: Path) -> None:
    init_keystore(tmp_path, 4, clients=1)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="already exists"):
        init_keystore(tmp_path, 4, clients=1)
    # A larger committee over the same directory is refused too, before writing anything.
    with pytest.raises(ConfigError, match="already exists"):
        init_keystore(tmp_path, 7, clients=3)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_make_committee_without_rng_is_random() -> None:
    first, second = (make_committee(4)[0] for _ in range(2))
    assert first.digest != second.digest


def test_a_client_may_not_take_a_members_name() -> None:
    committee, _, _ = make_committee(4, clients=1, rng=random.Random(3))
    data = committee.model_dump(mode="python")
    data["clients"][0]["id"] = "agent-2"
    with pytest.raises(ValidationError, match="is a member's name"):
        Committee.model_validate(data)
