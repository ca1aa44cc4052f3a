"""The ``file`` effect handler: whole-file writes inside a sandbox root, with rollback.

Steps: ``{"step": "patch", "target": "file:rel/path", "patch_id": ID}`` replaces the file's
content with the bytes the **patch store** holds under ``patch_id`` (a ``dict[patch_id,
bytes]`` given at construction). The proposal format names content by id and carries no
bytes (proposals stay small and reviewable; the content is fixed before the vote and
addressed by id), so a "patch" here is the full new content, not a diff: applying it twice
gives the same file, and rollback needs only the prior content. ``{"step": "read", ...}``
is a check only: ``ok`` (with the content's sha256) if the file exists inside the sandbox.

Sandbox: the target is a relative path; an absolute path, a ``..`` component, a NUL, the
state directory ``.bftd/`` itself, or a path whose symlinks resolve outside the root is
``permission_denied`` before anything is read or written. Writes go to the resolved path.
(A hostile process that swaps a symlink *between* check and write is outside this model:
the sandbox root must not be writable by untrusted parties while a commit runs.)

Idempotency record, kept in ``<root>/.bftd/file/`` per key:

* ``<key>.intent`` -- CBOR ``{path, existed, prior, new_sha256, patch_id}``: the prior
  content (or its absence) and the digest of the new content, written and fsynced
  **before** the effect;
* ``<key>.done`` -- written after the effect is durable;
* ``<key>.compensated`` -- written after a rollback (or to fence a never-applied key).

The effect itself is atomic: temp file next to the target, fsync, ``os.replace``, fsync of
the directory. "Applied" is defined as ``done`` present, **or** ``intent`` present and the
file's content equal to the new content -- so the key record is atomic with the effect even
though it spans two files. Crash windows in ``apply``:

1. before the intent is durable: nothing happened; ``was_applied`` is False; re-apply runs.
2. intent durable, rename not done: the file holds the prior content != new, so
   ``was_applied`` is False and a re-apply keeps the first intent (its prior is the truth)
   and performs the rename.
3. rename done, ``done`` not yet written: the content equals the new content, so
   ``was_applied`` is True and a re-apply does nothing (and writes ``done``).

Window 3 relies on nobody else changing the file before recovery asks ``was_applied``; the
ledger's per-resource concurrency limit (the file stays held by the in-doubt commit) gives
that. A patch whose new content equals the prior content is applied by definition.

``compensate`` restores the prior content (atomically) or removes a file that did not exist,
then writes ``compensated``; a crash in between makes the next ``compensate`` restore again,
which is idempotent. After compensation ``was_applied`` is False and ``apply`` of that key is
refused (``permanent``): a rolled-back step never takes effect again under the same key.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from bftdeliberate.commit.handlers.base import (
    STATE_DIR,
    atomic_write,
    check_step,
    denied,
    fsync_dir,
    invalid,
    permanent,
    split_target,
)
from bftdeliberate.commit.types import AppliedState, StepCall, StepOutcome
from bftdeliberate.errors import ConfigError, DecodeError
from bftdeliberate.wire import cbor

#: Largest file content a patch may write or a backup may hold.
MAX_FILE_SIZE = 64 * 1024 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class FileHandler:
    """Write files under ``sandbox_root`` with backups for rollback (module docstring)."""

    kind = "file"
    step_kinds = frozenset({"read", "patch"})

    def __init__(self, sandbox_root: str | os.PathLike[str],
                 patches: Mapping[str, bytes] | None = None) -> None:
        root = Path(sandbox_root)
        if not root.is_dir():
            raise ConfigError(f"{root}: sandbox root is not a directory")
        self.root = root.resolve()
        self.patches: dict[str, bytes] = dict(patches or {})
        for patch_id, content in self.patches.items():
            if not isinstance(content, bytes):
                raise ConfigError(f"patch {patch_id!r}: content must be bytes")
            if len(content) > MAX_FILE_SIZE:
                raise ConfigError(f"patch {patch_id!r}: larger than {MAX_FILE_SIZE} bytes")
        self.state_dir = self.root / STATE_DIR / "file"
        self._lock = threading.Lock()

    # -- checks -----------------------------------------------------------------------------

    def _resolve(self, step: Mapping[str, Any]) -> Path | StepOutcome:
        target = split_target(step.get("target"))
        if target is None or target[0] != self.kind:
            return invalid(f"target {step.get('target')!r} is not 'file:relative/path'")
        rel = target[1]
        if "\x00" in rel:
            return denied("path contains a NUL byte")
        pure = PurePosixPath(rel)
        if pure.is_absolute() or rel.startswith("~"):
            return denied(f"path {rel!r} is absolute; targets are relative to the sandbox")
        if ".." in pure.parts:
            return denied(f"path {rel!r} has a '..' component")
        if not pure.parts or pure.parts[0] == STATE_DIR:
            return denied(f"path {rel!r} is not a file inside the sandbox")
        resolved = (self.root / pure).resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            return denied(f"path {rel!r} resolves outside the sandbox root")
        if resolved.relative_to(self.root).parts[0] == STATE_DIR:
            return denied(f"path {rel!r} resolves into the handler's state directory")
        return resolved

    def check(self, call: StepCall) -> StepOutcome | None:
        return check_step(call, self.step_kinds, "file", self._resolve, self.patches)

    # -- state ------------------------------------------------------------------------------

    def _marker(self, key: str, suffix: str) -> Path:
        return self.state_dir / f"{key}.{suffix}"

    def _intent(self, key: str) -> dict[str, Any] | None:
        data = _read(self._marker(key, "intent"))
        if data is None:
            return None
        try:
            intent = cbor.decode(data, max_size=MAX_FILE_SIZE + 4096)
        except DecodeError as exc:
            raise ConfigError(f"{self._marker(key, 'intent')}: corrupt state file ({exc})") from None
        return intent if isinstance(intent, dict) else None

    def state(self, key: str) -> AppliedState:
        if not isinstance(key, str) or not key or "/" in key:
            return "not_applied"
        if self._marker(key, "compensated").exists():
            return "compensated"
        if self._marker(key, "done").exists():
            return "applied"
        intent = self._intent(key)
        if intent is None:
            return "not_applied"
        current = _read(self.root / intent["path"])
        if current is not None and _sha256(current) == intent["new_sha256"]:
            return "applied"
        return "not_applied"

    def was_applied(self, key: str) -> bool:
        return self.state(key) == "applied"

    def _write_marker(self, key: str, suffix: str, data: bytes) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._marker(key, suffix), data, tmp_name=f".{key}.{suffix}.tmp")

    # -- effects ----------------------------------------------------------------------------

    def apply(self, call: StepCall) -> StepOutcome:
        refusal = self.check(call)
        if refusal is not None:
            return refusal
        resolved = self._resolve(call.step)
        assert isinstance(resolved, Path)
        if call.step["step"] == "read":
            return self._read_step(resolved)
        with self._lock:
            return self._apply_patch(call, resolved)

    def _read_step(self, path: Path) -> StepOutcome:
        if not path.is_file():
            return permanent(f"{path.relative_to(self.root)}: no such file in the sandbox")
        return StepOutcome(ok=True, output_digest=_sha256(path.read_bytes()))

    def _apply_patch(self, call: StepCall, path: Path) -> StepOutcome:
        key = call.idempotency_key
        new = self.patches[call.step["patch_id"]]
        digest = _sha256(new)
        state = self.state(key)
        if state == "compensated":
            return permanent(f"idempotency key {key} was compensated; not applied again")
        if state == "applied":
            if not self._marker(key, "done").exists():
                self._write_marker(key, "done", b"")
            return StepOutcome(ok=True, already_applied=True, output_digest=digest,
                               detail="already applied")
        rel = path.relative_to(self.root).as_posix()
        intent = self._intent(key)
        if intent is None:
            if path.exists() and not path.is_file():
                return permanent(f"{rel}: not a regular file")
            prior = _read(path)
            if prior is not None and len(prior) > MAX_FILE_SIZE:
                return permanent(f"{rel}: larger than {MAX_FILE_SIZE} bytes; no backup taken")
            record = {"path": rel, "existed": prior is not None, "prior": prior or b"",
                      "new_sha256": digest, "patch_id": call.step["patch_id"]}
            self._write_marker(key, "intent", cbor.encode(record))
        elif intent["path"] != rel or intent["new_sha256"] != digest:
            return permanent(f"idempotency key {key} was used for another step")
        try:
            mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, new, mode=mode, tmp_name=f".{path.name}.bftd-{key[:32]}.tmp")
        except OSError as exc:
            return permanent(f"{rel}: write failed: {exc.strerror or exc}")
        self._write_marker(key, "done", b"")
        return StepOutcome(ok=True, output_digest=digest)

    def compensate(self, call: StepCall) -> StepOutcome:
        refusal = self.check(call)
        if refusal is not None:
            return refusal
        if call.step["step"] == "read":
            return StepOutcome(ok=True, detail="read steps have nothing to undo")
        key = call.idempotency_key
        with self._lock:
            if self._marker(key, "compensated").exists():
                return StepOutcome(ok=True, already_applied=True, detail="already compensated")
            intent = self._intent(key)
            if intent is not None:
                path = self.root / intent["path"]
                try:
                    if intent["existed"]:
                        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
                        atomic_write(path, intent["prior"], mode=mode,
                                     tmp_name=f".{path.name}.bftd-{key[:32]}.tmp")
                    elif path.exists():
                        path.unlink()
                        fsync_dir(path.parent)
                except OSError as exc:
                    return permanent(f"{intent['path']}: restore failed: {exc.strerror or exc}")
            self._write_marker(key, "compensated", b"")
            detail = "restored prior content" if intent is not None else "fenced: never applied"
            return StepOutcome(ok=True, detail=detail)
