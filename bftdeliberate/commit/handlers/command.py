"""The ``command`` effect handler: run an allow-listed program in a working directory.

Steps: ``{"step": "test" | "command", "cmd": "pytest -q", "timeout_ms": 600000}``. The
command line is split with :func:`shlex.split` and run **without a shell**; its program
(``argv[0]``, compared as written) must be in the allow-list, else ``permission_denied``
and nothing runs. A program written with a path (``/bin/sleep``, ``./run``) must be
allow-listed with exactly that path.

The process runs in its own session (process group) with stdin from ``/dev/null``; after
``timeout_ms`` (the call's) the whole group is killed and the outcome is ``timeout``
(retryable). A completed run reports its exit code and ``output_digest`` = sha256(stdout ||
stderr); a non-zero exit is ``test_failed``.

Idempotency: a completed run's outcome is recorded under its key in
``<state_dir>/<key>.json`` (default ``<workdir>/.bftd/command/``, written atomically), and
a re-apply returns the recorded outcome with ``already_applied=True`` without running
again. Timeouts and spawn failures are not recorded (the retry runs the command). A
process's effects cannot be made atomic with a state file: a crash after the run and before
the record means the command runs again, so ``test``/``command`` steps are at-least-once and
should be idempotent or read-only (tests, linters, builds). Steps whose effects must happen
exactly once belong in a handler that records keys atomically (``file``, ``kv``, or an
embedder's own). ``compensate`` is a no-op ``ok``: a command cannot be undone; a plan that
needs to undo one says so with its own step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from bftdeliberate.commit.handlers.base import (
    STATE_DIR,
    atomic_write,
    check_key,
    denied,
    invalid,
    permanent,
    step_field,
)
from bftdeliberate.commit.types import AppliedState, StepCall, StepOutcome
from bftdeliberate.errors import ConfigError

#: How long to wait for a killed process group's pipes to close before giving up on them.
KILL_GRACE_S = 5.0


class CommandHandler:
    """Run allow-listed commands with a timeout (see the module docstring)."""

    kind = "command"
    step_kinds = frozenset({"test", "command"})

    def __init__(self, workdir: str | os.PathLike[str], allow: Iterable[str], *,
                 state_dir: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        if not self.workdir.is_dir():
            raise ConfigError(f"{self.workdir}: command working directory is not a directory")
        self.allow = frozenset(allow)
        if not all(isinstance(p, str) and p for p in self.allow):
            raise ConfigError("the command allow-list holds non-empty program names")
        self.state_dir = (Path(state_dir) if state_dir is not None
                          else self.workdir / STATE_DIR / "command")
        self.env = dict(env) if env is not None else None
        self._lock = threading.Lock()
        #: Processes actually started (tests and metrics: a re-apply must not add one).
        self.runs = 0

    def _argv(self, call: StepCall) -> list[str] | StepOutcome:
        kind = call.step.get("step")
        if kind not in self.step_kinds:
            return invalid(f"the command handler does not run {kind!r} steps")
        refusal = check_key(call)
        if refusal is not None:
            return refusal
        cmd = step_field(call.step, "cmd")
        if cmd is None:
            return invalid(f"step {kind!r} needs a 'cmd'")
        try:
            argv = shlex.split(cmd)
        except ValueError as exc:
            return invalid(f"cannot split command line: {exc}")
        if not argv:
            return invalid("empty command line")
        if argv[0] not in self.allow:
            return denied(f"program {argv[0]!r} is not in the command allow-list")
        if type(call.timeout_ms) is not int or call.timeout_ms < 1:
            return invalid(f"timeout_ms must be a positive integer; got {call.timeout_ms!r}")
        return argv

    def check(self, call: StepCall) -> StepOutcome | None:
        argv = self._argv(call)
        return argv if isinstance(argv, StepOutcome) else None

    # -- state ------------------------------------------------------------------------------

    def _record_path(self, key: str) -> Path:
        return self.state_dir / f"{key}.json"

    def recorded(self, key: str) -> StepOutcome | None:
        """The recorded outcome of ``key``'s completed run, if any."""
        try:
            data = json.loads(self._record_path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self._record_path(key)}: corrupt state file ({exc})") from None
        return StepOutcome(ok=data["ok"], error_code=data["error_code"], detail=data["detail"],
                           output_digest=data["output_digest"])

    def state(self, key: str) -> AppliedState:
        if not isinstance(key, str) or not key or "/" in key:
            return "not_applied"
        return "applied" if self._record_path(key).exists() else "not_applied"

    def was_applied(self, key: str) -> bool:
        return self.state(key) == "applied"

    # -- effects ----------------------------------------------------------------------------

    def apply(self, call: StepCall) -> StepOutcome:
        argv = self._argv(call)
        if isinstance(argv, StepOutcome):
            return argv
        with self._lock:
            previous = self.recorded(call.idempotency_key)
            if previous is not None:
                return StepOutcome(ok=previous.ok, error_code=previous.error_code,
                                   detail=previous.detail, output_digest=previous.output_digest,
                                   already_applied=True)
            outcome = self._run(argv, call.timeout_ms)
            if outcome.ok or outcome.error_code == "test_failed":
                self.state_dir.mkdir(parents=True, exist_ok=True)
                record = {"ok": outcome.ok, "error_code": outcome.error_code,
                          "detail": outcome.detail, "output_digest": outcome.output_digest,
                          "cmd": call.step["cmd"]}
                atomic_write(self._record_path(call.idempotency_key),
                             json.dumps(record, sort_keys=True).encode(),
                             tmp_name=f".{call.idempotency_key}.json.tmp")
            return outcome

    def _run(self, argv: list[str], timeout_ms: int) -> StepOutcome:
        try:
            process = subprocess.Popen(
                argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            return permanent(f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        self.runs += 1
        try:
            stdout, stderr = process.communicate(timeout=timeout_ms / 1000)
        except subprocess.TimeoutExpired:
            self._kill_group(process)
            return StepOutcome(ok=False, error_code="timeout",
                               detail=f"{argv[0]} did not finish within {timeout_ms} ms")
        except BaseException:
            self._kill_group(process)
            raise
        digest = hashlib.sha256(stdout + stderr).hexdigest()
        code = process.returncode
        if code != 0:
            return StepOutcome(ok=False, error_code="test_failed", output_digest=digest,
                               detail=f"{argv[0]} exited with status {code}")
        return StepOutcome(ok=True, output_digest=digest, detail=f"{argv[0]} exited with status 0")

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:  # a grandchild escaped the group holding a pipe
            process.kill()
            process.wait()

    def compensate(self, call: StepCall) -> StepOutcome:
        refusal = self.check(call)
        if refusal is not None:
            return refusal
        return StepOutcome(ok=True, detail="commands are not undoable; nothing to compensate")
