"""The ``kv`` effect handler: key-value writes in a SQLite database, one transaction each.

Steps use the proposal's kinds: ``{"step": "patch", "target": "kv:table/key", "patch_id":
ID}`` sets ``key`` in ``table`` to the bytes the patch store holds under ``patch_id`` (as for
the file handler, the plan names content by id); ``{"step": "read", "target":
"kv:table/key"}`` is a check only (``ok`` with the value's sha256 if the row exists).
Tables must be in the allow-list given at construction (identifiers only); any other table
is ``permission_denied`` before anything is read or written.

Each table is ``CREATE TABLE <table> (key TEXT PRIMARY KEY, value BLOB NOT NULL)``. Applied
keys live in ``bftd_applied_keys(idem_key PRIMARY KEY, tbl, key, existed, prior, state)``.

Atomicity: ``apply`` is **one** ``BEGIN IMMEDIATE`` transaction that checks the key, writes
the row and inserts the ``bftd_applied_keys`` row with the prior value; SQLite commits both
or neither (``synchronous=FULL``), so there is no crash window between effect and key
record. ``compensate`` is one transaction too: it restores the prior value (or deletes a
row that did not exist) and marks the key ``compensated``; compensating a key never applied
inserts a ``compensated`` row, fencing a late apply (see ``base``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from bftdeliberate.commit.handlers.base import (
    check_step,
    denied,
    invalid,
    permanent,
    split_target,
    transient,
)
from bftdeliberate.commit.types import AppliedState, StepCall, StepOutcome
from bftdeliberate.errors import ConfigError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: The table holding applied idempotency keys (not allowed as a user table).
KEYS_TABLE = "bftd_applied_keys"
#: How long a transaction waits for another writer's lock (then: ``transient``).
BUSY_TIMEOUT_S = 5.0


class SqliteKvHandler:
    """Key-value rows in SQLite, each write atomic with its key record (module docstring)."""

    kind = "kv"
    step_kinds = frozenset({"read", "patch"})

    def __init__(self, db_path: str | os.PathLike[str], tables: Iterable[str],
                 patches: Mapping[str, bytes] | None = None) -> None:
        self.db_path = Path(db_path)
        self.tables = frozenset(tables)
        for table in self.tables:
            if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table):
                raise ConfigError(f"kv table name {table!r} is not an identifier")
            if table.lower().startswith("bftd_") or table.lower().startswith("sqlite_"):
                raise ConfigError(f"kv table name {table!r} is reserved")
        self.patches: dict[str, bytes] = dict(patches or {})
        self._lock = threading.Lock()
        db = self._connect()
        try:
            db.execute(f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (idem_key TEXT PRIMARY KEY,"
                       " tbl TEXT NOT NULL, key TEXT NOT NULL, existed INTEGER NOT NULL,"
                       " prior BLOB, state TEXT NOT NULL)")
            for table in sorted(self.tables):
                db.execute(f'CREATE TABLE IF NOT EXISTS "{table}"'
                           " (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        except sqlite3.Error as exc:
            raise ConfigError(f"{self.db_path}: cannot set up kv database ({exc})") from None
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"{self.db_path}: cannot open kv database ({exc})") from None
        db.execute("PRAGMA synchronous=FULL")
        return db

    # -- checks -----------------------------------------------------------------------------

    def _target(self, step: Mapping[str, Any]) -> tuple[str, str] | StepOutcome:
        target = split_target(step.get("target"))
        if target is None or target[0] != self.kind or "/" not in target[1]:
            return invalid(f"target {step.get('target')!r} is not 'kv:table/key'")
        table, _, key = target[1].partition("/")
        if table not in self.tables:
            return denied(f"table {table!r} is not in the kv allow-list")
        if not key:
            return invalid(f"target {step.get('target')!r} names no key")
        return table, key

    def check(self, call: StepCall) -> StepOutcome | None:
        return check_step(call, self.step_kinds, "kv", self._target, self.patches)

    # -- state ------------------------------------------------------------------------------

    def state(self, key: str) -> AppliedState:
        db = self._connect()
        try:
            row = db.execute(f"SELECT state FROM {KEYS_TABLE} WHERE idem_key = ?",
                             (key,)).fetchone()
        finally:
            db.close()
        return row[0] if row is not None else "not_applied"

    def was_applied(self, key: str) -> bool:
        return self.state(key) == "applied"

    def value(self, table: str, key: str) -> bytes | None:
        """The current value of ``key`` in ``table`` (tests, audits)."""
        if table not in self.tables:
            raise ConfigError(f"table {table!r} is not in the kv allow-list")
        db = self._connect()
        try:
            row = db.execute(f'SELECT value FROM "{table}" WHERE key = ?', (key,)).fetchone()
        finally:
            db.close()
        return row[0] if row is not None else None

    # -- effects ----------------------------------------------------------------------------

    def apply(self, call: StepCall) -> StepOutcome:
        refusal = self.check(call)
        if refusal is not None:
            return refusal
        table, key = self._target(call.step)  # type: ignore[misc]
        if call.step["step"] == "read":
            value = self.value(table, key)
            if value is None:
                return permanent(f"kv:{table}/{key}: no such row")
            return StepOutcome(ok=True, output_digest=hashlib.sha256(value).hexdigest())
        new = self.patches[call.step["patch_id"]]
        digest = hashlib.sha256(new).hexdigest()
        idem = call.idempotency_key

        def write(db: sqlite3.Connection) -> tuple[StepOutcome, bool]:
            row = db.execute(f"SELECT state FROM {KEYS_TABLE} WHERE idem_key = ?",
                             (idem,)).fetchone()
            if row is not None:
                if row[0] == "compensated":
                    return permanent(f"idempotency key {idem} was compensated;"
                                     " not applied again"), False
                return StepOutcome(ok=True, already_applied=True, output_digest=digest,
                                   detail="already applied"), False
            prior = db.execute(f'SELECT value FROM "{table}" WHERE key = ?', (key,)).fetchone()
            db.execute(f'INSERT OR REPLACE INTO "{table}" (key, value) VALUES (?, ?)',
                       (key, new))
            db.execute(f"INSERT INTO {KEYS_TABLE} VALUES (?, ?, ?, ?, ?, 'applied')",
                       (idem, table, key, prior is not None,
                        prior[0] if prior is not None else None))
            return StepOutcome(ok=True, output_digest=digest), True

        return self._transaction(f"kv:{table}/{key}", write)

    def compensate(self, call: StepCall) -> StepOutcome:
        refusal = self.check(call)
        if refusal is not None:
            return refusal
        if call.step["step"] == "read":
            return StepOutcome(ok=True, detail="read steps have nothing to undo")
        table, key = self._target(call.step)  # type: ignore[misc]
        idem = call.idempotency_key

        def restore(db: sqlite3.Connection) -> tuple[StepOutcome, bool]:
            row = db.execute(f"SELECT tbl, key, existed, prior, state FROM {KEYS_TABLE}"
                             " WHERE idem_key = ?", (idem,)).fetchone()
            if row is None:
                db.execute(f"INSERT INTO {KEYS_TABLE} VALUES (?, ?, ?, 0, NULL, 'compensated')",
                           (idem, table, key))
                return StepOutcome(ok=True, detail="fenced: never applied"), True
            if row[4] == "compensated":
                return StepOutcome(ok=True, already_applied=True,
                                   detail="already compensated"), False
            rtable, rkey, existed, prior, _ = row
            if rtable not in self.tables:
                return denied(f"table {rtable!r} is not in the kv allow-list"), False
            if existed:
                db.execute(f'INSERT OR REPLACE INTO "{rtable}" (key, value) VALUES (?, ?)',
                           (rkey, prior))
            else:
                db.execute(f'DELETE FROM "{rtable}" WHERE key = ?', (rkey,))
            db.execute(f"UPDATE {KEYS_TABLE} SET state = 'compensated' WHERE idem_key = ?",
                       (idem,))
            return StepOutcome(ok=True, detail="restored prior value"), True

        return self._transaction(f"kv:{table}/{key}", restore)

    def _transaction(self, where: str,
                     work: Callable[[sqlite3.Connection], tuple[StepOutcome, bool]]
                     ) -> StepOutcome:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction, committed when it says so,
        else rolled back (also on any exception); a locked or busy database is
        ``transient``."""
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    outcome, commit = work(db)
                    db.execute("COMMIT" if commit else "ROLLBACK")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:  # locked/busy: another writer
                return transient(f"{where}: {exc}")
            finally:
                db.close()
        return outcome
