"""Effect handlers: exactly one effect per idempotency key, rollback to the prior state,
allow-lists and sandbox refusals before anything runs, command timeouts and digests, and the
file handler's crash windows."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from bftdeliberate.commit.handlers import (
    CommandHandler,
    EffectHandler,
    FileHandler,
    HandlerRegistry,
    SqliteKvHandler,
)
from bftdeliberate.commit.handlers.base import atomic_write
from bftdeliberate.commit.types import StepCall

PATCHES = {"patch-new": b"new content\n", "patch-two": b"second\n"}


def call(step: dict, key: str = "k1", timeout_ms: int = 5000, index: int = 0) -> StepCall:
    resource = step.get("target") or f"command:{step.get('cmd', '').split()[0]}"
    return StepCall(commit_id="c-1", index=index, idempotency_key=key, resource=resource,
                    step=step, timeout_ms=timeout_ms)


def patch(target: str, patch_id: str = "patch-new", key: str = "k1") -> StepCall:
    return call({"step": "patch", "target": target, "patch_id": patch_id}, key=key)


@pytest.fixture
def sandbox(tmp_path):
    root = tmp_path / "sandbox"
    (root / "src").mkdir(parents=True)
    (root / "src" / "foo.ts").write_bytes(b"old content\n")
    return root


@pytest.fixture
def files(sandbox):
    return FileHandler(sandbox, PATCHES)


def tree(root) -> dict[str, bytes]:
    """Every regular file under root (state dir included) with its content."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as file:
                    out[os.path.relpath(path, root)] = file.read()
    return out


# -- file handler ---------------------------------------------------------------------------------


def test_handlers_implement_the_protocol(sandbox, tmp_path):
    for handler in (FileHandler(sandbox), CommandHandler(tmp_path, {"true"}),
                    SqliteKvHandler(tmp_path / "kv.db", {"t"})):
        assert isinstance(handler, EffectHandler)


def test_file_patch_applies_once_per_key(files, sandbox):
    c = patch("file:src/foo.ts")
    assert not files.was_applied("k1")
    first = files.apply(c)
    assert first.ok and not first.already_applied
    assert first.output_digest == hashlib.sha256(b"new content\n").hexdigest()
    assert (sandbox / "src/foo.ts").read_bytes() == b"new content\n"
    assert files.was_applied("k1")
    (sandbox / "src/foo.ts").write_bytes(b"edited later\n")  # what a re-apply must not undo
    again = files.apply(c)
    assert again.ok and again.already_applied
    assert (sandbox / "src/foo.ts").read_bytes() == b"edited later\n"


def test_file_compensate_restores_prior_content_and_is_idempotent(files, sandbox):
    c = patch("file:src/foo.ts")
    assert files.apply(c).ok
    assert files.compensate(c).ok
    assert (sandbox / "src/foo.ts").read_bytes() == b"old content\n"
    assert files.state("k1") == "compensated" and not files.was_applied("k1")
    second = files.compensate(c)
    assert second.ok and second.already_applied
    assert (sandbox / "src/foo.ts").read_bytes() == b"old content\n"
    refused = files.apply(c)  # a rolled-back key never takes effect again
    assert refused.error_code == "permanent"
    assert (sandbox / "src/foo.ts").read_bytes() == b"old content\n"


def test_file_compensate_removes_a_created_file(files, sandbox):
    c = patch("file:src/new/dir/created.txt")
    assert files.apply(c).ok
    assert (sandbox / "src/new/dir/created.txt").read_bytes() == b"new content\n"
    assert files.compensate(c).ok
    assert not (sandbox / "src/new/dir/created.txt").exists()


def test_compensating_a_never_applied_key_fences_a_late_apply(files, sandbox):
    c = patch("file:src/foo.ts", key="late")
    out = files.compensate(c)
    assert out.ok and "fenced" in out.detail
    assert files.apply(c).error_code == "permanent"
    assert (sandbox / "src/foo.ts").read_bytes() == b"old content\n"


def test_file_preserves_mode(files, sandbox):
    os.chmod(sandbox / "src/foo.ts", 0o640)
    assert files.apply(patch("file:src/foo.ts")).ok
    assert os.stat(sandbox / "src/foo.ts").st_mode & 0o777 == 0o640


@pytest.mark.parametrize("target", [
    "file:../outside.txt", "file:src/../../outside.txt", "file:/etc/passwd", "file:/tmp/x",
    "file:.bftd/file/k1.done", "file:link-out/evil.txt", "file:link-file",
])
def test_file_sandbox_escapes_are_denied_with_nothing_written(files, sandbox, tmp_path, target):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"victim\n")
    os.symlink(outside, sandbox / "link-out")
    os.symlink(outside / "victim.txt", sandbox / "link-file")
    before_in, before_out = tree(sandbox), tree(tmp_path / "outside")
    c = patch(target)
    assert files.check(c).error_code == "permission_denied"
    out = files.apply(c)
    assert out.error_code == "permission_denied" and not out.ok
    assert files.compensate(c).error_code == "permission_denied"
    assert tree(sandbox) == before_in and tree(tmp_path / "outside") == before_out
    assert not (tmp_path / "outside.txt").exists()


def test_symlink_inside_the_sandbox_is_followed(files, sandbox):
    os.symlink(sandbox / "src" / "foo.ts", sandbox / "alias.ts")
    assert files.apply(patch("file:alias.ts")).ok
    assert (sandbox / "src/foo.ts").read_bytes() == b"new content\n"
    assert os.path.islink(sandbox / "alias.ts")


def test_file_invalid_steps(files):
    assert files.check(patch("file:src/foo.ts", patch_id="nope")).error_code == "invalid_step"
    assert files.check(patch("kv:t/x")).error_code == "invalid_step"
    assert files.check(patch("file:src/foo.ts", key="../bad")).error_code == "invalid_step"
    assert files.check(call({"step": "test", "cmd": "ls"})).error_code == "invalid_step"


def test_file_read_is_a_check_only(files, sandbox):
    before = tree(sandbox)
    out = files.apply(call({"step": "read", "target": "file:src/foo.ts"}))
    assert out.ok and out.output_digest == hashlib.sha256(b"old content\n").hexdigest()
    assert files.apply(call({"step": "read", "target": "file:src/missing"})).error_code == \
        "permanent"
    assert files.apply(call({"step": "read", "target": "file:../x"})).error_code == \
        "permission_denied"
    assert tree(sandbox) == before


def test_crash_after_intent_before_rename_is_not_applied_and_reapply_works(
        files, sandbox, monkeypatch):
    import bftdeliberate.commit.handlers.file as file_module

    real = file_module.atomic_write

    def crash_on_target(path, data, **kwargs):
        if os.fspath(path).endswith("foo.ts"):
            raise SystemExit("crash before the rename")
        return real(path, data, **kwargs)

    monkeypatch.setattr(file_module, "atomic_write", crash_on_target)
    c = patch("file:src/foo.ts")
    with pytest.raises(SystemExit):
        files.apply(c)
    monkeypatch.setattr(file_module, "atomic_write", real)
    assert (sandbox / ".bftd/file/k1.intent").exists()  # the marker was written first
    assert (sandbox / "src/foo.ts").read_bytes() == b"old content\n"
    restarted = FileHandler(sandbox, PATCHES)  # a new process after the crash
    assert not restarted.was_applied("k1")
    out = restarted.apply(c)
    assert out.ok and not out.already_applied
    assert (sandbox / "src/foo.ts").read_bytes() == b"new content\n"
    assert restarted.compensate(c).ok  # the intent kept the true prior content
    assert (sandbox / "src/foo.ts").read_bytes() == b"old content\n"


def test_crash_after_rename_before_done_counts_as_applied(files, sandbox):
    c = patch("file:src/foo.ts")
    assert files.apply(c).ok
    (sandbox / ".bftd/file/k1.done").unlink()  # the crash came before the done marker
    restarted = FileHandler(sandbox, PATCHES)
    assert restarted.was_applied("k1")
    out = restarted.apply(c)
    assert out.ok and out.already_applied
    assert (sandbox / ".bftd/file/k1.done").exists()


def test_file_key_reused_for_another_step_is_refused(files, sandbox):
    assert files.apply(patch("file:src/foo.ts")).ok
    (sandbox / ".bftd/file/k1.done").unlink()
    (sandbox / "src/foo.ts").write_bytes(b"old content\n")
    assert files.apply(patch("file:src/other.ts")).error_code == "permanent"


def test_atomic_write_leaves_no_temp_file(tmp_path):
    atomic_write(tmp_path / "a", b"x")
    atomic_write(tmp_path / "a", b"y")
    assert os.listdir(tmp_path) == ["a"] and (tmp_path / "a").read_bytes() == b"y"


# -- command handler ------------------------------------------------------------------------------


def test_command_runs_once_per_key_with_exit_code_and_digest(tmp_path):
    handler = CommandHandler(tmp_path, {"sh"})
    c = call({"step": "test", "cmd": "sh -c 'echo out; echo err >&2; echo run >> log'"})
    out = handler.apply(c)
    assert out.ok and "status 0" in out.detail
    assert out.output_digest == hashlib.sha256(b"out\nerr\n").hexdigest()
    again = handler.apply(c)
    assert again.ok and again.already_applied and again.output_digest == out.output_digest
    assert (tmp_path / "log").read_text() == "run\n" and handler.runs == 1
    restarted = CommandHandler(tmp_path, {"sh"})
    assert restarted.was_applied("k1") and restarted.apply(c).already_applied
    assert restarted.runs == 0
    assert handler.compensate(c).ok and (tmp_path / "log").read_text() == "run\n"


def test_command_nonzero_exit_is_test_failed_and_recorded(tmp_path):
    handler = CommandHandler(tmp_path, {"sh"})
    c = call({"step": "test", "cmd": "sh -c 'exit 3'"})
    out = handler.apply(c)
    assert out.error_code == "test_failed" and "status 3" in out.detail
    assert handler.apply(c).already_applied and handler.runs == 1


@pytest.mark.parametrize("cmd", ["rm -rf /", "/bin/sh -c true", "bash -c true", "env sh"])
def test_command_outside_the_allow_list_is_denied_and_nothing_runs(tmp_path, cmd):
    handler = CommandHandler(tmp_path, {"sh", "true"})
    c = call({"step": "command", "cmd": cmd})
    assert handler.check(c).error_code == "permission_denied"
    assert handler.apply(c).error_code == "permission_denied"
    assert handler.runs == 0 and not (tmp_path / ".bftd").exists()


def test_command_invalid_lines(tmp_path):
    handler = CommandHandler(tmp_path, {"sh"})
    assert handler.check(call({"step": "test", "cmd": "sh -c 'unbalanced"})).error_code == \
        "invalid_step"
    assert handler.check(call({"step": "read", "target": "file:x"})).error_code == \
        "invalid_step"


@pytest.mark.skipif(shutil.which("sleep") is None, reason="needs sleep")
def test_command_timeout_kills_the_process_and_is_not_recorded(tmp_path):
    import time

    handler = CommandHandler(tmp_path, {"sleep"})
    c = call({"step": "test", "cmd": "sleep 5"}, timeout_ms=200)
    started = time.monotonic()
    out = handler.apply(c)
    assert time.monotonic() - started < 3
    assert out.error_code == "timeout" and out.retryable
    assert not handler.was_applied("k1")


def test_missing_program_is_permanent(tmp_path):
    handler = CommandHandler(tmp_path, {"no-such-program-bftd"})
    out = handler.apply(call({"step": "test", "cmd": "no-such-program-bftd"}))
    assert out.error_code == "permanent" and not handler.was_applied("k1")


# -- sqlite kv handler ----------------------------------------------------------------------------


@pytest.fixture
def kv(tmp_path):
    return SqliteKvHandler(tmp_path / "kv.db", {"settings"}, PATCHES)


def test_kv_applies_once_per_key_and_compensates_to_absence(kv):
    c = patch("kv:settings/mode")
    assert kv.apply(c).ok and kv.value("settings", "mode") == b"new content\n"
    assert kv.was_applied("k1")
    again = kv.apply(c)
    assert again.ok and again.already_applied
    assert kv.compensate(c).ok and kv.value("settings", "mode") is None
    assert kv.compensate(c).already_applied
    assert kv.apply(c).error_code == "permanent" and kv.value("settings", "mode") is None


def test_kv_compensate_restores_prior_value(kv):
    assert kv.apply(patch("kv:settings/mode", "patch-two", key="first")).ok
    c = patch("kv:settings/mode", key="second")
    assert kv.apply(c).ok and kv.value("settings", "mode") == b"new content\n"
    assert kv.compensate(c).ok and kv.value("settings", "mode") == b"second\n"
    assert kv.state("second") == "compensated" and kv.state("first") == "applied"


def test_kv_table_outside_the_allow_list_is_denied(kv, tmp_path):
    import sqlite3

    c = patch("kv:secrets/root")
    assert kv.check(c).error_code == "permission_denied"
    assert kv.apply(c).error_code == "permission_denied"
    db = sqlite3.connect(tmp_path / "kv.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "secrets" not in tables
    assert db.execute("SELECT COUNT(*) FROM bftd_applied_keys").fetchone() == (0,)
    db.close()


def test_kv_read_and_invalid_steps(kv):
    assert kv.apply(call({"step": "read", "target": "kv:settings/mode"})).error_code == \
        "permanent"
    assert kv.apply(patch("kv:settings/mode")).ok
    assert kv.apply(call({"step": "read", "target": "kv:settings/mode"}, key="r")).ok
    assert kv.check(patch("kv:settings")).error_code == "invalid_step"
    assert kv.check(patch("kv:settings/x", patch_id="missing")).error_code == "invalid_step"


def test_kv_rejects_bad_table_names(tmp_path):
    from bftdeliberate.errors import ConfigError

    with pytest.raises(ConfigError):
        SqliteKvHandler(tmp_path / "kv.db", {'x"; DROP TABLE y; --'})
    with pytest.raises(ConfigError):
        SqliteKvHandler(tmp_path / "kv.db", {"bftd_applied_keys"})


# -- registry -------------------------------------------------------------------------------------


def test_registry_routes_by_scheme_and_kind_and_checks_before_running(files, kv, tmp_path):
    commands = CommandHandler(tmp_path, {"true"})
    registry = HandlerRegistry([files, kv, commands])
    assert registry.handler_for({"step": "patch", "target": "file:a"}) is files
    assert registry.handler_for({"step": "read", "target": "kv:settings/a"}) is kv
    assert registry.handler_for({"step": "test", "cmd": "true"}) is commands
    assert registry.handler_for({"step": "patch", "target": "http:x"}).error_code == \
        "invalid_step"
    assert registry.handler_for({"step": "dance", "target": "file:a"}).error_code == \
        "invalid_step"
    plan = [patch("file:src/foo.ts"), call({"step": "test", "cmd": "rm -rf /"}, key="k2")]
    assert registry.check_all(plan).error_code == "permission_denied"
    assert registry.check_all(plan[:1]) is None
