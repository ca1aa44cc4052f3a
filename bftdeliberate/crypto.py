"""Ed25519 signatures, key files and the verification cache (DESIGN.md sections 3 and 10).

Every protocol signature is over :func:`signing_payload`, which binds the protocol tag, the
committee digest and the message type to the body, so a signature can never be replayed into
another committee or reinterpreted as another message type.

Two interchangeable backends sit behind the small :class:`SignatureBackend` interface. Both
give the same verdict on every input, including a Byzantine signer's crafted edge cases
(small-order or non-canonical points): an honest replica's decision must not depend on which
library it happens to run.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bftdeliberate.errors import ConfigError, KeyFileError, LocalError
from bftdeliberate.files import read_bytes

try:
    import nacl.bindings as _nacl
    import nacl.exceptions as _nacl_exceptions
except ImportError:  # PyNaCl is a declared dependency, but the cryptography backend suffices.
    _nacl = None  # type: ignore[assignment]
    _nacl_exceptions = None  # type: ignore[assignment]

PROTOCOL_TAG: bytes = b"bftdeliberate/v1"
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32
#: Bound (entries) of a :class:`Verifier`'s result cache.
VERIFY_CACHE_SIZE = 65536
#: (committee digest, message type) domain prefixes remembered.
DOMAIN_PREFIX_CACHE_SIZE = 256
#: Bound (keys) of each backend's cache of parsed key objects.
KEY_CACHE_SIZE = 4096
#: Largest length of a length-prefixed field of :func:`signing_payload` (u16 prefix).
MAX_PAYLOAD_FIELD_SIZE = 0xFFFF
#: Largest private key file read; an Ed25519 PKCS#8 PEM file is 119 bytes.
MAX_KEY_FILE_SIZE = 64 * 1024
#: Mode of a private key file, whatever the umask.
PRIVATE_KEY_FILE_MODE = 0o600
#: Size of the message hash in a verification cache key. 256 bits, not 128: a Byzantine
#: signer who found a collision (2**64 work at 128 bits) could get a signature on one message
#: accepted, from the cache, for another.
VERIFY_CACHE_HASH_SIZE = 32

SSH_KEY_TYPE = "ssh-ed25519"
_SSH_LENGTH_PREFIX_SIZE = 4

PYNACL = "pynacl"
CRYPTOGRAPHY = "cryptography"

# Curve25519 field prime, and the y coordinates of the 8 points of small order (the torsion
# subgroup): the identity (1), order 2 (p-1), order 4 (0), order 8 (+-y8). libsodium refuses
# such points as public keys and as the R half of a signature; OpenSSL accepts them, which
# would let a Byzantine signer craft signatures that only one backend accepts (for example
# R = identity and S = H(R,A,M)*a).
_FIELD_PRIME = 2**255 - 19
_ORDER_8_Y = 0x5FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826
_SMALL_ORDER_Y = frozenset({0, 1, _FIELD_PRIME - 1, _ORDER_8_Y, _FIELD_PRIME - _ORDER_8_Y})
_Y_MASK = (1 << 255) - 1


def is_strict_point(encoding: bytes) -> bool:
    """True if ``encoding`` is a canonical point encoding outside the small-order subgroup.

    This is libsodium's rule for public keys and signature R values; applying it in the
    cryptography backend makes both backends agree on every signature.
    """
    if len(encoding) != PUBLIC_KEY_SIZE:
        return False
    y = int.from_bytes(encoding, "little") & _Y_MASK
    return y < _FIELD_PRIME and y not in _SMALL_ORDER_Y


def _length_prefixed(field: bytes, what: str) -> bytes:
    if len(field) > MAX_PAYLOAD_FIELD_SIZE:
        raise LocalError(f"{what} is {len(field)} bytes; at most {MAX_PAYLOAD_FIELD_SIZE}")
    return len(field).to_bytes(2, "big") + field


def signing_payload(committee_digest: bytes, message_type: str, body: bytes) -> bytes:
    """The exact bytes signed for ``body``: unambiguous and domain-separated.

    ``PROTOCOL_TAG || 0x00 || u16 len || committee_digest || u16 len || utf8 type || body``.
    The tag contains no NUL byte and both variable fields are length-prefixed, so distinct
    (committee, type, body) triples never produce the same bytes.
    """
    return _domain_prefix(committee_digest, message_type) + body


@functools.lru_cache(maxsize=DOMAIN_PREFIX_CACHE_SIZE)
def _domain_prefix(committee_digest: bytes, message_type: str) -> bytes:
    # One committee and a handful of message types: computed once, looked up per message.
    return b"".join(
        (
            PROTOCOL_TAG,
            b"\x00",
            _length_prefixed(committee_digest, "committee digest"),
            _length_prefixed(message_type.encode("utf-8"), "message type"),
        )
    )


class SignatureBackend(Protocol):
    """The one small interface over an Ed25519 library."""

    name: str

    def sign(self, seed: bytes, message: bytes) -> bytes: ...

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        """True only for a valid signature; never raises on bad input."""
        ...

    def public_key(self, seed: bytes) -> bytes: ...


_Value = TypeVar("_Value")


def _well_formed(public_key: object, signature: object) -> bool:
    return (
        isinstance(public_key, bytes)
        and isinstance(signature, bytes)
        and len(public_key) == PUBLIC_KEY_SIZE
        and len(signature) == SIGNATURE_SIZE
    )


def _remember(cache: dict[bytes, _Value], key: bytes, value: _Value) -> None:
    """Insert into a bounded insertion-ordered cache, evicting the oldest entry when full."""
    if len(cache) >= KEY_CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = value


class NaclBackend:
    """libsodium through PyNaCl's raw bindings (no per-call key object construction)."""

    name = PYNACL

    def __init__(self) -> None:
        if _nacl is None:
            raise ConfigError("signature backend 'pynacl' needs the PyNaCl package")
        # seed -> libsodium's 64-byte secret key (seed || public key).
        self._secret_keys: dict[bytes, bytes] = {}

    def _secret_key(self, seed: bytes) -> bytes:
        secret_key = self._secret_keys.get(seed)
        if secret_key is None:
            _public_key, secret_key = _nacl.crypto_sign_seed_keypair(seed)
            _remember(self._secret_keys, seed, secret_key)
        return secret_key

    def sign(self, seed: bytes, message: bytes) -> bytes:
        return _nacl.crypto_sign(message, self._secret_key(seed))[:SIGNATURE_SIZE]

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        if not _well_formed(public_key, signature):
            return False
        try:
            _nacl.crypto_sign_open(signature + message, public_key)
        except (_nacl_exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    def public_key(self, seed: bytes) -> bytes:
        return self._secret_key(seed)[SEED_SIZE:]


class CryptographyBackend:
    """OpenSSL through ``cryptography``, with libsodium's point checks added (module doc)."""

    name = CRYPTOGRAPHY

    def __init__(self) -> None:
        self._private_keys: dict[bytes, Ed25519PrivateKey] = {}
        # raw public key -> parsed key, or None for a key that is refused.
        self._public_keys: dict[bytes, Ed25519PublicKey | None] = {}

    def _private_key(self, seed: bytes) -> Ed25519PrivateKey:
        key = self._private_keys.get(seed)
        if key is None:
            key = Ed25519PrivateKey.from_private_bytes(seed)
            _remember(self._private_keys, seed, key)
        return key

    def _public_key(self, public_key: bytes) -> Ed25519PublicKey | None:
        if public_key in self._public_keys:
            return self._public_keys[public_key]
        key: Ed25519PublicKey | None = None
        if is_strict_point(public_key):
            try:
                key = Ed25519PublicKey.from_public_bytes(public_key)
            except ValueError:
                key = None
        _remember(self._public_keys, public_key, key)
        return key

    def sign(self, seed: bytes, message: bytes) -> bytes:
        return self._private_key(seed).sign(message)

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        if not _well_formed(public_key, signature):
            return False
        if not is_strict_point(signature[:PUBLIC_KEY_SIZE]):
            return False
        key = self._public_key(public_key)
        if key is None:
            return False
        try:
            key.verify(signature, message)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def public_key(self, seed: bytes) -> bytes:
        return self._private_key(seed).public_key().public_bytes_raw()


# Default backend: measured on this project's machines, one core, 64-byte messages: verify
# 18.9k/s with PyNaCl (libsodium) vs 9.8k/s with cryptography (OpenSSL), a 1.92x ratio; sign
# 50.6k/s vs 31.6k/s. Verification is the throughput ceiling, so PyNaCl is preferred.
_DEFAULT_PREFERENCE = (PYNACL, CRYPTOGRAPHY)
_BACKEND_CLASSES: dict[str, type[NaclBackend | CryptographyBackend]] = {
    PYNACL: NaclBackend,
    CRYPTOGRAPHY: CryptographyBackend,
}
# The module's only mutable state: created on first use, shared so its key caches are shared.
_default_backend: SignatureBackend | None = None


def _importable(name: str) -> bool:
    return name != PYNACL or _nacl is not None


def available_backends() -> dict[str, SignatureBackend]:
    """One instance of every backend whose library is importable, by name."""
    return {name: get_backend(name) for name in _DEFAULT_PREFERENCE if _importable(name)}


def get_backend(name: str | None = None) -> SignatureBackend:
    """The named backend, or the default one (PyNaCl when importable) for ``None``."""
    global _default_backend
    if _default_backend is None:
        default_name = next(n for n in _DEFAULT_PREFERENCE if _importable(n))
        _default_backend = _BACKEND_CLASSES[default_name]()
    if name is None or name == _default_backend.name:
        return _default_backend
    backend_class = _BACKEND_CLASSES.get(name)
    if backend_class is None:
        known = ", ".join(sorted(_BACKEND_CLASSES))
        raise ConfigError(f"unknown signature backend {name!r} (known: {known})")
    return backend_class()


class PrivateKey:
    """An Ed25519 signing key (its 32-byte seed) bound to a backend."""

    __slots__ = ("_backend", "_public_key", "_seed")

    def __init__(self, seed: bytes, backend: SignatureBackend | None = None) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            size = len(seed) if isinstance(seed, bytes) else type(seed).__name__
            raise ConfigError(f"an Ed25519 private key seed is {SEED_SIZE} bytes; got {size}")
        self._seed = seed
        self._backend = backend if backend is not None else get_backend()
        self._public_key = self._backend.public_key(seed)

    @classmethod
    def generate(
        cls, rng: random.Random | None = None, backend: SignatureBackend | None = None
    ) -> PrivateKey:
        """A new key; from ``rng`` when given (deterministic simulations), else os.urandom."""
        seed = rng.randbytes(SEED_SIZE) if rng is not None else os.urandom(SEED_SIZE)
        return cls(seed, backend)

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def backend(self) -> SignatureBackend:
        return self._backend

    def sign(self, committee_digest: bytes, message_type: str, body: bytes) -> bytes:
        """Sign ``body`` as a ``message_type`` message of the committee ``committee_digest``."""
        return self._backend.sign(self._seed, signing_payload(committee_digest, message_type, body))

    def sign_raw(self, message: bytes) -> bytes:
        """Sign ``message`` as is, without domain separation (tests, external formats)."""
        return self._backend.sign(self._seed, message)

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM, as written to key files (protected by file mode 0600)."""
        return Ed25519PrivateKey.from_private_bytes(self._seed).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(
        cls, data: bytes, source: str = "<memory>", backend: SignatureBackend | None = None
    ) -> PrivateKey:
        """Parse an unencrypted PKCS#8 PEM Ed25519 key; KeyFileError naming ``source``."""
        if b"-----BEGIN" not in data:
            raise KeyFileError(f"{source}: not a PEM file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyFileError(
                f"{source}: encrypted private keys are not supported (protect the file "
                "with mode 0600 instead)"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{source}: not a PKCS#8 PEM Ed25519 private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(
                f"{source}: holds a {type(key).__name__.lstrip('_')}; only Ed25519 keys are "
                "accepted"
            )
        return cls(key.private_bytes_raw(), backend)

    def __repr__(self) -> str:
        # Never the seed: reprs end up in logs and tracebacks.
        return f"PrivateKey({fingerprint(self._public_key)}, backend={self._backend.name})"


def _fsync_directory(directory: Path) -> None:
    """Make a new directory entry durable; best effort (not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> None:
    """Create ``path`` holding ``key`` (mode 0600, fsynced); never overwrites a file."""
    pem = key.to_pem()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, PRIVATE_KEY_FILE_MODE)
    except FileExistsError:
        raise KeyFileError(
            f"{os.fspath(path)}: already exists; refusing to overwrite a private key"
        ) from None
    except OSError as error:
        raise KeyFileError(f"{os.fspath(path)}: cannot create ({error.strerror})") from None
    try:
        os.fchmod(fd, PRIVATE_KEY_FILE_MODE)  # the umask may have removed bits of 0600
        remaining = memoryview(pem)
        while remaining:
            remaining = remaining[os.write(fd, remaining) :]
        os.fsync(fd)
    except OSError as error:
        os.close(fd)
        os.unlink(path)  # we created it (O_EXCL): do not leave a truncated key behind
        raise KeyFileError(f"{os.fspath(path)}: cannot write ({error.strerror})") from None
    os.close(fd)
    _fsync_directory(Path(path).parent)


def load_private_key(
    path: str | os.PathLike[str], backend: SignatureBackend | None = None
) -> PrivateKey:
    """Read a key file written by :func:`write_private_key` (or any PKCS#8 PEM Ed25519 key).

    Every failure is a one-line KeyFileError naming the file. The file's mode is not checked:
    protecting it is the operator's business, and :func:`write_private_key` creates it 0600.
    """
    data = read_bytes(path, max_size=MAX_KEY_FILE_SIZE, kind="a key file", error=KeyFileError)
    return PrivateKey.from_pem(data, source=os.fspath(path), backend=backend)


def _ssh_string(value: bytes) -> bytes:
    return len(value).to_bytes(_SSH_LENGTH_PREFIX_SIZE, "big") + value


def _ssh_blob(public_key: bytes) -> bytes:
    """OpenSSH wire format of an Ed25519 public key: string "ssh-ed25519", string key."""
    return _ssh_string(SSH_KEY_TYPE.encode("ascii")) + _ssh_string(public_key)


def _check_public_key_size(public_key: bytes) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")


def public_key_to_ssh(public_key: bytes, comment: str = "") -> str:
    """``"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... comment"``, as in authorized_keys."""
    _check_public_key_size(public_key)
    if any(char in comment for char in "\r\n"):
        raise ValueError("an ssh public key comment cannot contain a line break")
    line = f"{SSH_KEY_TYPE} {base64.b64encode(_ssh_blob(public_key)).decode('ascii')}"
    return f"{line} {comment}" if comment else line


def public_key_from_ssh(line: str) -> bytes:
    """The raw 32-byte key of an ``ssh-ed25519`` line; strict, ValueError on anything else.

    Refuses other key types, non-canonical or invalid base64, a blob that is not exactly
    (string "ssh-ed25519", string 32-byte key), and keys that are not strict points
    (:func:`is_strict_point`).
    """
    if not isinstance(line, str):
        raise TypeError(f"an ssh public key line is a str, not {type(line).__name__}")
    stripped = line.strip()
    if any(char in stripped for char in "\r\n"):
        raise ValueError("an ssh public key is a single line")
    fields = stripped.split(maxsplit=2)
    if len(fields) < 2:
        raise ValueError(f"expected '{SSH_KEY_TYPE} <base64 key> [comment]'")
    key_type, encoded = fields[0], fields[1]
    if key_type != SSH_KEY_TYPE:
        raise ValueError(f"unsupported key type {key_type!r}; only {SSH_KEY_TYPE} is accepted")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    if base64.b64encode(blob).decode("ascii") != encoded:
        raise ValueError("the key is not canonical base64")
    type_length = len(SSH_KEY_TYPE)
    expected_type = _ssh_string(SSH_KEY_TYPE.encode("ascii"))
    if blob[: _SSH_LENGTH_PREFIX_SIZE + type_length] != expected_type:
        raise ValueError(f"the key blob does not start with the type {SSH_KEY_TYPE!r}")
    key_field = blob[_SSH_LENGTH_PREFIX_SIZE + type_length :]
    if len(key_field) < _SSH_LENGTH_PREFIX_SIZE:
        raise ValueError("the key blob is truncated")
    key_length = int.from_bytes(key_field[:_SSH_LENGTH_PREFIX_SIZE], "big")
    public_key = key_field[_SSH_LENGTH_PREFIX_SIZE:]
    if key_length != PUBLIC_KEY_SIZE:
        raise ValueError(f"the key is {key_length} bytes; an Ed25519 key is {PUBLIC_KEY_SIZE}")
    if len(public_key) < PUBLIC_KEY_SIZE:
        raise ValueError("the key blob is truncated")
    if len(public_key) > PUBLIC_KEY_SIZE:
        raise ValueError("the key blob has trailing bytes after the key")
    if not is_strict_point(public_key):
        raise ValueError("not a usable Ed25519 public key (non-canonical or small-order point)")
    return public_key


def fingerprint(public_key: bytes) -> str:
    """OpenSSH's fingerprint: ``"SHA256:"`` + unpadded base64 of sha256(ssh blob)."""
    _check_public_key_size(public_key)
    digest = hashlib.sha256(_ssh_blob(public_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


_CacheKey = tuple[bytes, bytes, bytes]  # (public key, signature, message hash)


class Verifier:
    """Verifies domain-separated signatures with a bounded LRU cache so the same (key, bytes,
    signature) is never verified twice.

    Both verdicts are cached: a forged signature re-sent by a Byzantine peer costs a hash, not
    a verification. ``verifications`` counts real backend calls, ``cache_hits`` the rest.
    """

    def __init__(
        self, backend: SignatureBackend | None = None, cache_size: int = VERIFY_CACHE_SIZE
    ) -> None:
        if cache_size < 0:
            raise ConfigError(f"verification cache size must be >= 0; got {cache_size}")
        self.backend: SignatureBackend = backend if backend is not None else get_backend()
        self.cache_size = cache_size
        self.verifications = 0
        self.cache_hits = 0
        self._cache: OrderedDict[_CacheKey, bool] = OrderedDict()

    def __len__(self) -> int:
        """Number of cached verdicts (never more than ``cache_size``)."""
        return len(self._cache)

    def verify(
        self,
        public_key: bytes,
        committee_digest: bytes,
        message_type: str,
        body: bytes,
        signature: bytes,
    ) -> bool:
        """True if ``signature`` is ``public_key``'s signature of this domain-separated body."""
        payload = signing_payload(committee_digest, message_type, body)
        return self.verify_raw(public_key, payload, signature)

    def verify_raw(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is ``public_key``'s signature of ``message``; never raises."""
        if not _well_formed(public_key, signature) or not isinstance(message, bytes):
            return False
        if not self.cache_size:
            self.verifications += 1
            return self.backend.verify(public_key, signature, message)
        digest = hashlib.blake2b(message, digest_size=VERIFY_CACHE_HASH_SIZE).digest()
        key = (public_key, signature, digest)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        valid = self.backend.verify(public_key, signature, message)
        self.verifications += 1
        if self.cache_size:
            self._cache[key] = valid
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return valid
