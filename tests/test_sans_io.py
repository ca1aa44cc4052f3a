"""The sans-IO rule (DESIGN.md section 2): cores never import trio or other IO, never read a
clock and never use the global ``random``. Enforced on the syntax tree, so a comment or a
string cannot hide a violation and an alias (``import time as t``) cannot dodge it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORES = ["bftdeliberate/pbft", "bftdeliberate/wire", "bftdeliberate/committee.py",
         "bftdeliberate/deliberation", "bftdeliberate/commit"]
# The commit layer's IO shell inside a core directory: its effect handlers and its WAL do
# file, process and database IO by design (DESIGN.md section 6). Everything else under
# ``bftdeliberate/commit`` (types, model, executor) stays a sans-IO core.
CORE_EXEMPT = ["bftdeliberate/commit/handlers", "bftdeliberate/commit/wal.py"]
# Modules whose mere import means IO or a clock inside a core.
FORBIDDEN_MODULES = {"trio", "asyncio", "socket", "selectors", "time", "datetime", "threading",
                     "subprocess", "urllib", "http", "ssl", "anyio"}
# committee.py and crypto helpers may read files at the edges; cores may not open sockets.
# From ``random`` only the class is allowed: an injected ``random.Random``.
ALLOWED_RANDOM_NAMES = {"Random"}
FORBIDDEN_CALLS = {"open"}  # file IO belongs to the shells (committee loading is the exception)
FILE_IO_ALLOWED = {"bftdeliberate/committee.py"}


def core_files() -> list[Path]:
    files: list[Path] = []
    for entry in CORES:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
    return [f for f in files if not exempt(f)]


def exempt(path: Path) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == entry or relative.startswith(entry + "/") for entry in CORE_EXEMPT)


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    relative = path.relative_to(ROOT).as_posix()
    random_aliases: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in FORBIDDEN_MODULES:
                    found.append(f"{relative}:{node.lineno}: import {alias.name}")
                if top == "random":
                    random_aliases.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in FORBIDDEN_MODULES:
                found.append(f"{relative}:{node.lineno}: from {node.module} import ...")
            if top == "random":
                for alias in node.names:
                    if alias.name not in ALLOWED_RANDOM_NAMES:
                        found.append(f"{relative}:{node.lineno}: from random import {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in random_aliases and node.attr not in ALLOWED_RANDOM_NAMES:
                found.append(f"{relative}:{node.lineno}: global random.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_CALLS and relative not in FILE_IO_ALLOWED:
                found.append(f"{relative}:{node.lineno}: {node.func.id}()")
    return found


def test_core_modules_exist():
    files = {p.relative_to(ROOT).as_posix() for p in core_files()}
    assert "bftdeliberate/pbft/replica.py" in files and "bftdeliberate/wire/cbor.py" in files


def test_core_exemptions_name_existing_shell_paths_only():
    for entry in CORE_EXEMPT:
        assert (ROOT / entry).exists(), f"{entry} is exempt but does not exist"
        assert entry.startswith("bftdeliberate/commit/"), entry
    files = {p.relative_to(ROOT).as_posix() for p in core_files()}
    assert "bftdeliberate/commit/types.py" in files
    assert not any(f.startswith("bftdeliberate/commit/handlers/") for f in files)
    assert "bftdeliberate/commit/wal.py" not in files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_module_does_no_io_reads_no_clock_and_uses_no_global_random(path):
    assert violations(path) == []


def test_the_checker_catches_each_kind_of_violation(tmp_path, monkeypatch):
    bad = tmp_path / "bftdeliberate" / "pbft" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "import trio\nimport time as clock\nfrom datetime import datetime\n"
        "import random\nrandom.random()\nrng = random.Random(1)\nfrom random import choice\n"
        "open('x')\n"
    )
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = violations(bad)
    assert len(found) == 6, found
    assert not any("random.Random" in line for line in found)
