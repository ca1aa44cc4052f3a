"""The genesis manifest: who the committee's members and authorised clients are.

A committee is fixed at genesis (for example ``keys/committee.json``). Its :attr:`digest`
goes into every signature (``crypto.signing_payload``), so a message signed for one committee
never verifies in another. Models are strict and frozen pydantic v2 models; validation
happens once, when the manifest is loaded, and lookups afterwards are plain dict reads.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from bftdeliberate.crypto import (
    PrivateKey,
    SignatureBackend,
    public_key_from_ssh,
    public_key_to_ssh,
    write_private_key,
)
from bftdeliberate.errors import ConfigError, LocalError
from bftdeliberate.files import read_text
from bftdeliberate.wire import cbor
from bftdeliberate.wire.limits import MAX_ID_LENGTH

ROLES = frozenset({"propose", "vote", "submit", "audit", "human"})
#: n = 3f + 1 with f >= 1.
MIN_MEMBERS = 4
MANIFEST_VERSION = 1
#: Longest member name: a member's agent signs requests under its name, and the ledger's
#: proposal ids embed it (``TASK.NAME.rROUND`` must stay within MAX_ID_LENGTH).
MAX_MEMBER_NAME_LENGTH = 64
MAX_PORT = 65535
#: Longest host part of an address (a DNS name is at most 253 characters).
MAX_HOST_LENGTH = 253
#: Largest manifest file read.
MAX_MANIFEST_SIZE = 16 * 1024 * 1024
#: Random hex characters in a generated committee id.
COMMITTEE_ID_RANDOM_BYTES = 4
MANIFEST_FILE_NAME = "committee.json"
#: Default first port of :func:`init_keystore` (member i listens on base_port + i).
DEFAULT_BASE_PORT = 7000
KEYSTORE_DIRECTORY_MODE = 0o700

_KNOWN_ROLES = ", ".join(sorted(ROLES))
# Identifiers end up in file names, log lines and CLI output: printable, no whitespace.
_IDENTIFIER = re.compile(r"[!-~\u00a1-\U0010ffff]+")
# host:port, where an IPv6 host is bracketed ("[::1]:7000").
_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) as (host without brackets, port); a
    ValueError saying what is wrong otherwise."""
    match = _ADDRESS.fullmatch(address)
    if match is None:
        raise ValueError(f"address {address!r} is not 'host:port'")
    if len(match["host"]) > MAX_HOST_LENGTH:
        raise ValueError(f"address host is longer than {MAX_HOST_LENGTH} characters")
    port = int(match["port"])
    if port > MAX_PORT:
        raise ValueError(f"address port {match['port']} is not in 0..{MAX_PORT}")
    return match["host"].strip("[]"), port


def _check_identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be printable with no whitespace")
    return value


def _check_ssh_key(value: str) -> str:
    try:
        public_key_from_ssh(value)
    except ValueError as error:
        raise ValueError(f"malformed public key: {error}") from None
    return value


def _plain(value: Any) -> Any:
    """``value`` with tuples turned into lists: the CBOR codec's data model has no tuples."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class _ManifestModel(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        # pydantic's model_copy(update=...) skips validation and keeps private attributes,
        # which would leave derived values (keys, digest) stale: revalidate instead.
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate({**dict(self), **update})


class Member(_ManifestModel):
    """One replica: id (its position), name, public key, roles and listening address."""

    id: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=MAX_MEMBER_NAME_LENGTH)
    public_key: str
    roles: tuple[str, ...]
    address: str

    _public_key_bytes: bytes = PrivateAttr()

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        return _check_identifier(value, "name")

    @field_validator("public_key")
    @classmethod
    def _public_key_is_ssh_line(cls, value: str) -> str:
        return _check_ssh_key(value)

    @field_validator("roles")
    @classmethod
    def _roles_are_known(cls, roles: tuple[str, ...]) -> tuple[str, ...]:
        for role in roles:
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} (known: {_KNOWN_ROLES})")
        if len(set(roles)) != len(roles):
            raise ValueError("a role is listed twice")
        return roles

    @field_validator("address")
    @classmethod
    def _address_is_host_port(cls, address: str) -> str:
        parse_address(address)
        return address

    def model_post_init(self, context: Any, /) -> None:
        self._public_key_bytes = public_key_from_ssh(self.public_key)

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key_bytes


class ClientEntry(_ManifestModel):
    """A client allowed to submit requests, by id and public key."""

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    public_key: str

    _public_key_bytes: bytes = PrivateAttr()

    @field_validator("id")
    @classmethod
    def _id_is_identifier(cls, value: str) -> str:
        return _check_identifier(value, "client id")

    @field_validator("public_key")
    @classmethod
    def _public_key_is_ssh_line(cls, value: str) -> str:
        return _check_ssh_key(value)

    def model_post_init(self, context: Any, /) -> None:
        self._public_key_bytes = public_key_from_ssh(self.public_key)

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key_bytes


class Committee(_ManifestModel):
    """The genesis manifest. n = len(members) tolerates f = (n-1)//3 Byzantine members."""

    version: int = MANIFEST_VERSION
    committee_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    members: tuple[Member, ...]
    clients: tuple[ClientEntry, ...] = ()

    _digest: bytes = PrivateAttr()
    _client_keys: dict[str, bytes] = PrivateAttr()
    _members_by_name: dict[str, Member] = PrivateAttr()
    _requester_keys: dict[str, bytes] = PrivateAttr()

    @field_validator("version")
    @classmethod
    def _version_is_supported(cls, version: int) -> int:
        if version != MANIFEST_VERSION:
            raise ValueError(
                f"manifest version {version} is not supported (this build reads version "
                f"{MANIFEST_VERSION})"
            )
        return version

    @field_validator("committee_id")
    @classmethod
    def _committee_id_is_identifier(cls, value: str) -> str:
        return _check_identifier(value, "committee id")

    @model_validator(mode="after")
    def _members_form_a_committee(self) -> Self:
        members = self.members
        if len(members) < MIN_MEMBERS:
            raise ValueError(
                f"a committee needs at least {MIN_MEMBERS} members (n = 3f+1, f >= 1); "
                f"got {len(members)}"
            )
        seen_ids: set[int] = set()
        for member in members:
            if member.id in seen_ids:
                raise ValueError(f"duplicate member id {member.id}")
            seen_ids.add(member.id)
        for position, member in enumerate(members):
            if member.id != position:
                raise ValueError(
                    f"member ids must be 0..{len(members) - 1} in order (the primary of view "
                    f"v is member v mod n); position {position} has id {member.id}"
                )
        seen_names: set[str] = set()
        for member in members:
            if member.name in seen_names:
                raise ValueError(f"duplicate member name {member.name!r}")
            seen_names.add(member.name)
        seen_client_ids: set[str] = set()
        for client in self.clients:
            if client.id in seen_client_ids:
                raise ValueError(f"duplicate client id {client.id!r}")
            if client.id in seen_names:
                # A member signs its agent's requests under its name: a client of the same
                # name would be able to speak as that member's agent.
                raise ValueError(f"client id {client.id!r} is a member's name")
            seen_client_ids.add(client.id)
        # One key, one identity: a shared key would let one signer count twice in a quorum
        # or act both as a member and as a client.
        key_owners: dict[bytes, str] = {}
        owners = [(m.public_key_bytes, f"member {m.id}") for m in members]
        owners += [(c.public_key_bytes, f"client {c.id!r}") for c in self.clients]
        for public_key, owner in owners:
            if public_key in key_owners:
                raise ValueError(f"{owner} reuses the public key of {key_owners[public_key]}")
            key_owners[public_key] = owner
        return self

    def model_post_init(self, context: Any, /) -> None:
        canonical = cbor.encode(_plain(self.model_dump(mode="python")))
        self._digest = hashlib.sha256(canonical).digest()
        self._client_keys = {client.id: client.public_key_bytes for client in self.clients}
        self._members_by_name = {member.name: member for member in self.members}
        # A member's agent sends requests (debate contributions, votes) under the member's
        # name, signed with the member's key: the request type is in the signed payload, so
        # a request never verifies as a protocol message or the reverse.
        self._requester_keys = {**self._client_keys,
                                **{m.name: m.public_key_bytes for m in self.members}}

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def f(self) -> int:
        """Byzantine members tolerated."""
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """Distinct signers of a certificate (PREPARE, COMMIT, CHECKPOINT, VIEW-CHANGE)."""
        return 2 * self.f + 1

    @property
    def reply_quorum(self) -> int:
        """Matching replies a client waits for: at least one is from an honest member."""
        return self.f + 1

    @property
    def digest(self) -> bytes:
        """sha256 of the manifest's canonical CBOR encoding; bound into every signature."""
        return self._digest

    def member(self, member_id: int) -> Member:
        if type(member_id) is not int or not 0 <= member_id < self.n:
            raise LocalError(f"no member {member_id!r} in a committee of {self.n}")
        return self.members[member_id]

    def member_public_key(self, member_id: int) -> bytes | None:
        """The member's raw public key, or None if there is no such member."""
        if type(member_id) is not int or not 0 <= member_id < self.n:
            return None
        return self.members[member_id].public_key_bytes

    def client_public_key(self, client_id: str) -> bytes | None:
        """The raw public key of a request signer: an authorised client, or a member's agent
        named by the member's name; None otherwise."""
        return self._requester_keys.get(client_id)

    def requester_keys(self) -> dict[str, bytes]:
        """Every request signer's key by id (clients and members' agents), as a new dict."""
        return dict(self._requester_keys)

    def member_named(self, name: str) -> Member | None:
        """The member whose agent signs requests as ``name``, or None."""
        return self._members_by_name.get(name)

    def primary(self, view: int) -> int:
        """The member id of view ``view``'s primary."""
        if view < 0:
            raise LocalError(f"views are numbered from 0; got {view}")
        return view % self.n

    def to_json(self) -> str:
        """The manifest as stable, indented JSON (field order is the model's)."""
        return self.model_dump_json(indent=2)


def _one_line(error: ValidationError) -> str:
    """pydantic's first error as ``"loc: message"`` on one line."""
    first = error.errors(include_url=False)[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        message = f"invalid JSON: {first.get('ctx', {}).get('error', message)}"
    location = ".".join(str(part) for part in first["loc"])
    text = f"{location}: {message}" if location else message
    return " ".join(text.split())


def load_committee(path: str | os.PathLike[str]) -> Committee:
    """Read and validate a manifest; any problem is a one-line ConfigError ``"PATH: ..."``."""
    source = os.fspath(path)
    text = read_text(path, max_size=MAX_MANIFEST_SIZE, kind="a committee manifest")
    try:
        return Committee.model_validate_json(text)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_one_line(error)}") from None


def save_committee(
    committee: Committee, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write the manifest as JSON; refuses to replace an existing file unless ``overwrite``."""
    mode = "w" if overwrite else "x"
    try:
        with open(path, mode, encoding="utf-8") as file:
            file.write(committee.to_json() + "\n")
            file.flush()
            os.fsync(file.fileno())
    except FileExistsError:
        raise ConfigError(
            f"{os.fspath(path)}: already exists; refusing to overwrite a committee manifest"
        ) from None
    except OSError as error:
        raise ConfigError(f"{os.fspath(path)}: cannot write ({error.strerror})") from None


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}"


def make_committee(
    n: int,
    *,
    clients: int = 1,
    rng: random.Random | None = None,
    committee_id: str = "local",
    host: str = "127.0.0.1",
    base_port: int = 0,
    backend: SignatureBackend | None = None,
    hosts: Sequence[str] | None = None,
) -> tuple[Committee, list[PrivateKey], dict[str, PrivateKey]]:
    """An in-memory genesis: the committee, member keys by id and client keys by client id.

    Member i is ``agent-{i}`` with every role, listening on ``base_port + i`` (port 0 for all
    when ``base_port`` is 0) of ``host`` -- or, with ``hosts`` (one per member: separate
    machines), on ``base_port`` of ``hosts[i]``; clients are ``client-{j}``. Deterministic
    when ``rng`` is given.
    """
    if clients < 0:
        raise ConfigError(f"the number of clients must be >= 0; got {clients}")
    if hosts is not None and len(hosts) != n:
        raise ConfigError(f"--hosts names {len(hosts)} hosts for {n} members")
    if hosts is not None and any(not h or any(c.isspace() for c in h) for h in hosts):
        raise ConfigError("--hosts: a host is a name or address without spaces")

    def address(i: int) -> str:
        if hosts is not None:
            return _address(hosts[i], base_port)
        return _address(host, base_port + i if base_port else 0)

    member_keys = [PrivateKey.generate(rng, backend) for _ in range(n)]
    client_keys = {f"client-{j}": PrivateKey.generate(rng, backend) for j in range(clients)}
    roles = tuple(sorted(ROLES))
    try:
        committee = Committee(
            committee_id=committee_id,
            members=tuple(
                Member(
                    id=i,
                    name=f"agent-{i}",
                    public_key=public_key_to_ssh(key.public_key, f"agent-{i}"),
                    roles=roles,
                    address=address(i),
                )
                for i, key in enumerate(member_keys)
            ),
            clients=tuple(
                ClientEntry(id=client_id, public_key=public_key_to_ssh(key.public_key, client_id))
                for client_id, key in client_keys.items()
            ),
        )
    except ValidationError as error:
        raise ConfigError(_one_line(error)) from None
    return committee, member_keys, client_keys


def init_keystore(
    directory: str | os.PathLike[str],
    n: int,
    *,
    clients: int = 1,
    committee_id: str | None = None,
    host: str = "127.0.0.1",
    base_port: int = DEFAULT_BASE_PORT,
    overwrite: bool = False,
    hosts: Sequence[str] | None = None,
) -> Committee:
    """Create a fresh genesis in ``directory``: ``agent-{i}.key``, ``client-{j}.key`` (mode
    0600) and ``committee.json``.

    Refuses, before writing anything, if any of these files exists, unless ``overwrite``
    (``bftd keys init --force``): then those files are replaced. Keys come from os.urandom.
    """
    root = Path(directory)
    if committee_id is None:
        committee_id = "committee-" + secrets.token_hex(COMMITTEE_ID_RANDOM_BYTES)
    committee, member_keys, client_keys = make_committee(
        n, clients=clients, committee_id=committee_id, host=host, base_port=base_port,
        hosts=hosts)
    key_files = [(root / f"agent-{i}.key", key) for i, key in enumerate(member_keys)]
    key_files += [(root / f"{client_id}.key", key) for client_id, key in client_keys.items()]
    manifest_path = root / MANIFEST_FILE_NAME
    for path in [manifest_path, *(path for path, _key in key_files)]:
        if path.exists() and not overwrite:
            raise ConfigError(f"{path}: already exists; refusing to overwrite a keystore "
                              "(--force replaces it)")
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory")
    try:
        root.mkdir(mode=KEYSTORE_DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{root}: cannot create directory ({error.strerror})") from None
    if overwrite:
        for path in [manifest_path, *(path for path, _key in key_files)]:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise ConfigError(f"{path}: cannot replace ({error.strerror})") from None
    written: list[Path] = []
    try:
        for path, key in key_files:
            write_private_key(path, key)
            written.append(path)
        save_committee(committee, manifest_path)
    except ConfigError:
        # Another process raced us: remove only what this call created, never its files.
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return committee
