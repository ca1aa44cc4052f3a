"""The effect handler interface and the registry that routes plan steps to handlers.

Handlers are the commit layer's IO shell (DESIGN.md sections 2 and 6): the sans-IO executor
(``commit/executor.py``) decides, a handler performs one step's effect and answers with a
:class:`~bftdeliberate.commit.types.StepOutcome`.

Contract of every handler (:class:`EffectHandler`):

* ``check(call)`` runs before anything else and does no effect: the step kind and fields fit
  this handler (else ``invalid_step``) and the target is inside its allow-list or sandbox
  (else ``permission_denied``). ``None`` means allowed. ``apply`` and ``compensate`` call it
  again themselves, so a skipped check can never run a forbidden step.
* ``apply(call)`` performs the effect and records the call's idempotency key **atomically
  with it** (each handler's docstring says how, and names its crash windows). A key already
  applied returns ``ok=True, already_applied=True`` and does nothing.
* ``was_applied(key)`` answers, after a crash or a view change, whether the key's effect is
  in place: the question a new submitter asks before retrying an in-doubt intent.
* ``compensate(call)`` rolls the step back to the state before its ``apply`` (the prior
  content, or its absence). It is idempotent, and compensating a key that was never applied
  is ``ok`` and *fences* the key: a late ``apply`` of it (a timed-out worker thread that
  finally runs) is refused with ``permanent`` instead of taking effect after the rollback.

All methods are **synchronous and blocking**: the peer runs them in a worker thread under
the step's timeout (``trio.to_thread.run_sync``), the simulator replaces them with simulated
handlers. Each handler serialises its own ``apply``/``compensate`` calls with a lock, so a
worker thread abandoned after a timeout cannot interleave with the compensation that follows.

Idempotency keys name state files and rows, so they must match :data:`KEY_PATTERN`
(the executor's keys are hex digests); any other key is an ``invalid_step``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from bftdeliberate.commit.types import AppliedState, StepCall, StepOutcome
from bftdeliberate.errors import ConfigError

#: What an idempotency key may look like (it becomes part of file names and SQL rows).
KEY_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,128}")
#: The state directory handlers keep inside their sandbox or working directory.
STATE_DIR = ".bftd"
#: Step kinds that carry a ``cmd`` instead of a resource target (routed by kind).
COMMAND_KINDS = frozenset({"test", "command"})


@runtime_checkable
class EffectHandler(Protocol):
    """One kind of resource the commit layer may change (see the module docstring)."""

    #: The resource scheme this handler serves (``file``, ``kv``, ``command``).
    kind: str
    #: The plan step kinds it accepts (``read``/``patch`` or ``test``/``command``).
    step_kinds: frozenset[str]

    def check(self, call: StepCall) -> StepOutcome | None: ...

    def apply(self, call: StepCall) -> StepOutcome: ...

    def was_applied(self, key: str) -> bool: ...

    def state(self, key: str) -> AppliedState: ...

    def compensate(self, call: StepCall) -> StepOutcome: ...


# -- outcome helpers --------------------------------------------------------------------------


def denied(detail: str) -> StepOutcome:
    return StepOutcome(ok=False, error_code="permission_denied", detail=detail)


def invalid(detail: str) -> StepOutcome:
    return StepOutcome(ok=False, error_code="invalid_step", detail=detail)


def permanent(detail: str) -> StepOutcome:
    return StepOutcome(ok=False, error_code="permanent", detail=detail)


def transient(detail: str) -> StepOutcome:
    return StepOutcome(ok=False, error_code="transient", detail=detail)


def check_key(call: StepCall) -> StepOutcome | None:
    """``invalid_step`` unless the call's idempotency key fits :data:`KEY_PATTERN`."""
    key = call.idempotency_key
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        return invalid(f"idempotency key {key!r} is not 1-128 of [0-9A-Za-z_-]")
    return None


def check_step(call: StepCall, kinds: Iterable[str], handler: str,
               locate: Callable[[Mapping[str, Any]], object],
               patches: Mapping[str, bytes]) -> StepOutcome | None:
    """The checks every patch-store handler makes before anything runs, in this order: the
    step kind, the idempotency key, the target (``locate`` returns a StepOutcome to refuse),
    and for a ``patch`` step a patch id the store holds."""
    kind = call.step.get("step")
    if kind not in kinds:
        return invalid(f"the {handler} handler does not run {kind!r} steps")
    refusal = check_key(call)
    if refusal is not None:
        return refusal
    located = locate(call.step)
    if isinstance(located, StepOutcome):
        return located
    if kind == "patch":
        patch_id = step_field(call.step, "patch_id")
        if patch_id is None or patch_id not in patches:
            return invalid(f"unknown patch_id {call.step.get('patch_id')!r}")
    return None


def split_target(target: object) -> tuple[str, str] | None:
    """``"file:src/a.py"`` -> ``("file", "src/a.py")``; None if not ``scheme:rest``."""
    if not isinstance(target, str) or ":" not in target:
        return None
    scheme, _, rest = target.partition(":")
    if not scheme or not rest:
        return None
    return scheme, rest


def step_field(step: Mapping[str, Any], name: str) -> str | None:
    value = step.get(name)
    return value if isinstance(value, str) and value else None


# -- small durable-file helpers (shared by the file and command handlers) -----------------------


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600,
                 tmp_name: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably: a temp file in the same
    directory, fsync, ``os.replace``, fsync of the directory. A crash leaves either the old
    file (or none) or the complete new one, plus possibly a stale temp file."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, tmp_name or f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


# -- registry ---------------------------------------------------------------------------------


class HandlerRegistry:
    """Routes a plan step to its handler: ``read``/``patch`` steps by their target's scheme
    (``file:`` -> the file handler, ``kv:`` -> the SQLite handler), ``test``/``command``
    steps by their kind (they carry a ``cmd``; their optional target only names the
    resource for the concurrency limit). Embedders register their own handlers (e.g. an
    HTTP call keyed by an idempotency header) under a new scheme."""

    def __init__(self, handlers: Iterable[EffectHandler] = ()) -> None:
        self._by_scheme: dict[str, EffectHandler] = {}
        self._by_kind: dict[str, EffectHandler] = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler: EffectHandler) -> None:
        """Add ``handler``: under its scheme for targeted steps, and under its step kinds
        for ``test``/``command``. A scheme or command kind registered twice is an error."""
        if not isinstance(handler, EffectHandler):
            raise ConfigError(f"{handler!r} does not implement EffectHandler")
        if handler.step_kinds & COMMAND_KINDS:
            for kind in handler.step_kinds & COMMAND_KINDS:
                if kind in self._by_kind:
                    raise ConfigError(f"a handler for {kind!r} steps is already registered")
                self._by_kind[kind] = handler
        else:
            if handler.kind in self._by_scheme:
                raise ConfigError(f"a handler for {handler.kind!r} is already registered")
            self._by_scheme[handler.kind] = handler

    def handler_for(self, step: Mapping[str, Any]) -> EffectHandler | StepOutcome:
        """The handler of ``step``, or an ``invalid_step`` outcome saying why there is none."""
        kind = step.get("step")
        if kind in COMMAND_KINDS:
            handler = self._by_kind.get(kind)
            if handler is None:
                return invalid(f"no handler for {kind!r} steps is configured")
            return handler
        target = split_target(step.get("target"))
        if target is None:
            return invalid(f"step {kind!r} needs a 'scheme:resource' target")
        handler = self._by_scheme.get(target[0])
        if handler is None:
            known = ", ".join(sorted(self._by_scheme)) or "none"
            return invalid(f"no handler for target scheme {target[0]!r} (configured: {known})")
        if kind not in handler.step_kinds:
            return invalid(f"the {handler.kind!r} handler does not run {kind!r} steps")
        return handler

    def check(self, call: StepCall) -> StepOutcome | None:
        """Route and check ``call`` without running anything (None = allowed)."""
        handler = self.handler_for(call.step)
        if isinstance(handler, StepOutcome):
            return handler
        return handler.check(call)

    def check_all(self, calls: Iterable[StepCall]) -> StepOutcome | None:
        """The first refusal among ``calls``, checked before any of them runs (a denied
        step stops the whole commit with nothing executed)."""
        for call in calls:
            refusal = self.check(call)
            if refusal is not None:
                return refusal
        return None

    @property
    def schemes(self) -> frozenset[str]:
        return frozenset(self._by_scheme)
