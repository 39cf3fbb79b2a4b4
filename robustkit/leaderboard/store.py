"""SQLite storage of the submission server: entries with their per-example records, and API tokens.

The database file is the server's only state (and its path its only configuration). It runs in WAL
mode with ``synchronous=FULL``, so an acknowledged submission survives a crash or a restart, and
readers never block the writer. Each call opens its own connection: the server calls the store from
a thread pool, and SQLite connections must not be shared across threads.

Lifecycle: an entry is identified by :meth:`Entry.identity` (defense configuration digest, threat
model, eps, protocol). Submitting a run whose identity is already on the board *updates* that entry
(same id; only its submitter may), the same bytes again change nothing, and the submitter's token can
withdraw an entry (it leaves every listing; the row stays for the record). Every change is appended
to the ``audit`` table, which SQLite triggers make append-only (an UPDATE or DELETE on it aborts).

Tokens: ``rk_<id>_<secret>``. Only the SHA-256 of the secret is stored; lookups go by the public id
and the digests are compared with :func:`hmac.compare_digest` (constant time). The secret is 256
random bits, so a fast hash is enough: there is nothing to brute-force that a slow KDF would protect.

Example::

    >>> import tempfile, os
    >>> from robustkit.leaderboard.store import Store
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = Store(os.path.join(d, "board.db"))
    ...     token = store.create_token("alice")
    ...     print(store.authenticate(token), store.authenticate(token + "x"), store.authenticate("nonsense"))
    alice None None
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import RobustkitError
from ..eval.schema import NAME_RE

STORE_VERSION = 3  # 2: entries.batch_dependent; 3: identity, withdrawal, audit log; older files migrate on open
_TOKEN_RE = re.compile(r"^rk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_DUMMY_DIGEST = hashlib.sha256(b"robustkit-no-such-token").hexdigest()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash TEXT NOT NULL UNIQUE,
    submitter TEXT NOT NULL,
    submitted_utc TEXT NOT NULL,
    name TEXT NOT NULL,
    defense TEXT NOT NULL,
    dataset TEXT NOT NULL,
    threat_model TEXT NOT NULL,
    eps REAL NOT NULL,
    stochastic INTEGER NOT NULL,
    adapts_at_test_time INTEGER NOT NULL,
    batch_dependent INTEGER NOT NULL DEFAULT 0,
    identity TEXT NOT NULL DEFAULT '',
    withdrawn INTEGER NOT NULL DEFAULT 0,
    unreliable INTEGER NOT NULL,
    clean_accuracy REAL NOT NULL,
    robust_accuracy REAL NOT NULL,
    board_accuracy REAL NOT NULL,
    entry_json TEXT NOT NULL,
    summary_json TEXT NOT NULL,
    examples_zlib BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_board ON entries (dataset, threat_model, board_accuracy);
"""

_SCHEMA_3 = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_utc TEXT NOT NULL,
    action TEXT NOT NULL,
    entry_id INTEGER NOT NULL,
    identity TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE INDEX IF NOT EXISTS entries_identity ON entries (identity);
"""
AUDIT_ACTIONS = ("create", "update", "withdraw", "reinstate")


class StoreError(RobustkitError, RuntimeError):
    """The database cannot be opened, has another schema version, or a token operation is invalid."""


class ConflictError(StoreError):
    """A write that the entry's owner alone may make (update or withdraw another submitter's entry);
    ``status`` is the HTTP answer (403 not yours, 404 no such entry)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredEntry:
    """One row: the entry JSON (parsed) with its id, submitter, time and content hash."""

    id: int
    content_hash: str
    submitter: str
    submitted_utc: str
    entry: dict[str, Any]
    summary: dict[str, Any]
    identity: str = ""
    withdrawn: bool = False

    def to_dict(self, *, with_summary: bool = False) -> dict[str, Any]:
        d = {"id": self.id, "content_hash": self.content_hash, "submitter": self.submitter,
             "submitted_utc": self.submitted_utc, "identity": self.identity, "withdrawn": self.withdrawn,
             "entry": self.entry}
        if with_summary:
            d["examples_summary"] = self.summary
        return d


class Store:
    """The leaderboard database at ``path`` (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; --db takes the path of a database file")
        if not self.path.parent.is_dir():
            raise StoreError(f"the directory of {self.path} does not exist")
        try:
            with self._connect() as con:
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); use a local filesystem")
                con.executescript(_SCHEMA)
                con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_version', ?)",
                            (str(STORE_VERSION),))
                version = con.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()[0]
            if version == "1":
                self._migrate_from_1()
                version = "2"
            if version == "2":
                self._migrate_from_2()
                version = str(STORE_VERSION)
            if version == str(STORE_VERSION):
                with self._connect() as con:
                    con.executescript(_SCHEMA_3)  # idempotent: the audit log, its guards, the identity index
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a usable SQLite database ({e})") from e
        if version != str(STORE_VERSION):
            raise StoreError(f"{self.path} has store version {version}, this robustkit reads {STORE_VERSION}")

    def _migrate_from_1(self) -> None:
        """Version 1 had no ``batch_dependent`` column: add it, filled from each stored entry's JSON (entries
        of entry schema 1 have no such field and were not batch-dependent), in one transaction."""
        with self._write() as con:
            if con.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()[0] != "1":
                return  # another process migrated it first
            con.execute("ALTER TABLE entries ADD COLUMN batch_dependent INTEGER NOT NULL DEFAULT 0")
            rows = con.execute("SELECT id, entry_json FROM entries").fetchall()
            con.executemany("UPDATE entries SET batch_dependent = ? WHERE id = ?",
                            [(int(bool(json.loads(e).get("batch_dependent", False))), i) for i, e in rows])
            con.execute("UPDATE meta SET value = '2' WHERE key = 'store_version'")

    def _migrate_from_2(self) -> None:
        """Version 2 had no identity, withdrawal or audit log: add them in one transaction, each entry's
        identity computed from its stored JSON; rows that share an identity stay (they were accepted)."""
        from .entry import Entry, EntryError

        with self._write() as con:
            if con.execute("SELECT value FROM meta WHERE key = 'store_version'").fetchone()[0] != "2":
                return
            cols = {r[1] for r in con.execute("PRAGMA table_info(entries)")}
            if "identity" not in cols:  # a fresh file got the columns from _SCHEMA already
                con.execute("ALTER TABLE entries ADD COLUMN identity TEXT NOT NULL DEFAULT ''")
                con.execute("ALTER TABLE entries ADD COLUMN withdrawn INTEGER NOT NULL DEFAULT 0")
                rows = con.execute("SELECT id, entry_json FROM entries").fetchall()
                identities = []
                for i, e in rows:
                    try:
                        identities.append((Entry.from_dict(json.loads(e)).identity(), i))
                    except (EntryError, ValueError) as err:
                        raise StoreError(f"{self.path}: entry {i} cannot be migrated ({err})") from err
                con.executemany("UPDATE entries SET identity = ? WHERE id = ?", identities)
            con.execute("UPDATE meta SET value = ? WHERE key = 'store_version'", (str(STORE_VERSION),))

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=60000")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ tokens
    def create_token(self, name: str) -> str:
        """A new API token for submitter ``name`` (shown once; only its hash is stored)."""
        if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
            raise StoreError(f"token name must match {NAME_RE.pattern}, got {name!r}")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        try:
            with self._write() as con:
                con.execute("INSERT INTO tokens (token_id, name, secret_sha256, created_utc) VALUES (?, ?, ?, ?)",
                            (token_id, name, hashlib.sha256(secret.encode()).hexdigest(), _now()))
        except sqlite3.IntegrityError as e:
            raise StoreError(f"a token named {name!r} already exists; revoke it first or pick another name") from e
        return f"rk_{token_id}_{secret}"

    def revoke_token(self, name: str) -> None:
        with self._write() as con:
            if con.execute("UPDATE tokens SET revoked = 1 WHERE name = ?", (name,)).rowcount == 0:
                raise StoreError(f"no token named {name!r}")

    def list_tokens(self) -> list[dict[str, Any]]:
        with self._connect() as con:
            rows = con.execute("SELECT name, created_utc, revoked FROM tokens ORDER BY name").fetchall()
        return [{"name": n, "created_utc": c, "revoked": bool(r)} for n, c, r in rows]

    def authenticate(self, token: str) -> str | None:
        """The submitter name of a valid, unrevoked ``token``, else None (constant-time digest comparison)."""
        m = _TOKEN_RE.match(token) if isinstance(token, str) else None
        token_id, secret = (m.group(1), m.group(2)) if m else ("", "")
        with self._connect() as con:
            row = con.execute("SELECT name, secret_sha256, revoked FROM tokens WHERE token_id = ?",
                              (token_id,)).fetchone()
        stored = row[1] if row else _DUMMY_DIGEST
        ok = hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), stored)
        return row[0] if (m and row and ok and not row[2]) else None

    # ----------------------------------------------------------------------------------------- entries
    def add_entry(self, *, content_hash: str, submitter: str, entry: dict[str, Any], board: dict[str, Any],
                  summary: dict[str, Any], examples: list[dict[str, Any]], identity: str) -> tuple[int, str]:
        """Store an entry; ``(id, action)`` with action ``"create"``, ``"update"`` (the identity was on
        the board: the row is replaced, same id), ``"reinstate"`` (it had been withdrawn) or
        ``"unchanged"`` (these exact contents are on the board). Updating another submitter's entry
        raises :class:`ConflictError` (403)."""
        blob = zlib.compress(json.dumps(examples, separators=(",", ":"), allow_nan=False).encode(), 6)
        values = dict(content_hash=content_hash, submitter=submitter, submitted_utc=_now(), name=entry["name"],
                      defense=entry["defense"], dataset=entry["dataset"], threat_model=entry["threat_model"],
                      eps=entry["eps"], stochastic=int(entry["stochastic"]),
                      adapts_at_test_time=int(entry["adapts_at_test_time"]),
                      batch_dependent=int(entry["batch_dependent"]), identity=identity, withdrawn=0,
                      unreliable=int(entry["unreliable"]), clean_accuracy=board["clean_accuracy"],
                      robust_accuracy=board["robust_accuracy"], board_accuracy=board["board_accuracy"],
                      entry_json=json.dumps(entry, sort_keys=True, allow_nan=False),
                      summary_json=json.dumps(summary, sort_keys=True, allow_nan=False), examples_zlib=blob)
        with self._write() as con:
            row = con.execute("SELECT id, submitter, withdrawn FROM entries WHERE content_hash = ?",
                              (content_hash,)).fetchone()
            if row and not row[2]:
                return int(row[0]), "unchanged"
            if row is None:  # the newest row of this identity, withdrawn or not
                row = con.execute("SELECT id, submitter, withdrawn FROM entries WHERE identity = ? "
                                  "ORDER BY withdrawn, id DESC LIMIT 1", (identity,)).fetchone()
            if row is None:
                cols = ", ".join(values)
                cur = con.execute(f"INSERT INTO entries ({cols}) VALUES ({', '.join('?' * len(values))})",
                                  list(values.values()))
                entry_id, action = int(cur.lastrowid), "create"
            else:
                entry_id, owner, withdrawn = int(row[0]), row[1], bool(row[2])
                if owner != submitter:
                    raise ConflictError(f"entry {entry_id} has this identity (same defense configuration, threat "
                                        f"model, eps and protocol) and belongs to {owner}; only its submitter may "
                                        "update it")
                con.execute(f"UPDATE entries SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                            [*values.values(), entry_id])
                action = "reinstate" if withdrawn else "update"
            self._audit(con, action, entry_id, identity, content_hash, submitter)
            return entry_id, action

    def withdraw(self, entry_id: int, submitter: str) -> StoredEntry:
        """Withdraw ``entry_id`` on behalf of ``submitter`` (its owner alone; :class:`ConflictError` 403,
        or 404 when there is no such entry). Withdrawing twice is a no-op. The row is kept, hidden."""
        with self._write() as con:
            row = con.execute("SELECT submitter, withdrawn, identity, content_hash FROM entries WHERE id = ?",
                              (entry_id,)).fetchone()
            if row is None:
                raise ConflictError(f"no entry with id {entry_id}", 404)
            if row[0] != submitter:
                raise ConflictError(f"entry {entry_id} belongs to {row[0]}; only its submitter may withdraw it")
            if not row[1]:
                con.execute("UPDATE entries SET withdrawn = 1 WHERE id = ?", (entry_id,))
                self._audit(con, "withdraw", entry_id, row[2], row[3], submitter)
        return self.get_entry(entry_id)

    @staticmethod
    def _audit(con: sqlite3.Connection, action: str, entry_id: int, identity: str, content_hash: str,
               actor: str) -> None:
        con.execute("INSERT INTO audit (time_utc, action, entry_id, identity, content_hash, actor) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (_now(), action, entry_id, identity, content_hash, actor))

    def audit_log(self, *, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The audit log, oldest first: ``{"seq", "time_utc", "action", "entry_id", "identity",
        "content_hash", "actor"}`` per change; also the total number of records."""
        with self._connect() as con:
            total = con.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
            rows = con.execute("SELECT seq, time_utc, action, entry_id, identity, content_hash, actor FROM audit "
                               "ORDER BY seq LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        keys = ("seq", "time_utc", "action", "entry_id", "identity", "content_hash", "actor")
        return [dict(zip(keys, r)) for r in rows], int(total)

    _COLUMNS = "id, content_hash, submitter, submitted_utc, entry_json, summary_json, identity, withdrawn"
    SORTS = {"board": "board_accuracy DESC, id", "robust": "robust_accuracy DESC, id",
             "clean": "clean_accuracy DESC, id", "submitted": "id DESC", "name": "name, id"}

    def list_entries(self, *, dataset: str | None = None, threat_model: str | None = None,
                     name: str | None = None, submitter: str | None = None, stochastic: bool | None = None,
                     adapts_at_test_time: bool | None = None, batch_dependent: bool | None = None,
                     unreliable: bool | None = None, sort: str = "board", limit: int = 100,
                     offset: int = 0) -> tuple[list[StoredEntry], int]:
        """Entries matching every given filter, sorted, paged; also the total number matching."""
        if sort not in self.SORTS:
            raise StoreError(f"sort must be one of {sorted(self.SORTS)}, got {sort!r}")
        where, params = ["withdrawn = 0"], []
        for col, v in (("dataset", dataset), ("threat_model", threat_model), ("name", name),
                       ("submitter", submitter)):
            if v is not None:
                where.append(f"{col} = ?")
                params.append(v)
        for col, b in (("stochastic", stochastic), ("adapts_at_test_time", adapts_at_test_time),
                       ("batch_dependent", batch_dependent), ("unreliable", unreliable)):
            if b is not None:
                where.append(f"{col} = ?")
                params.append(int(b))
        clause = " WHERE " + " AND ".join(where)
        with self._connect() as con:
            total = con.execute(f"SELECT COUNT(*) FROM entries{clause}", params).fetchone()[0]
            rows = con.execute(f"SELECT {self._COLUMNS} FROM entries{clause} ORDER BY {self.SORTS[sort]} "
                               "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
        return [self._row(r) for r in rows], int(total)

    def get_entry(self, entry_id: int) -> StoredEntry | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {self._COLUMNS} FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return self._row(row) if row else None

    def get_examples(self, entry_id: int) -> list[dict[str, Any]] | None:
        with self._connect() as con:
            row = con.execute("SELECT examples_zlib FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return json.loads(zlib.decompress(row[0])) if row else None

    def count(self) -> int:
        """Entries on the board (withdrawn ones not counted)."""
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM entries WHERE withdrawn = 0").fetchone()[0])

    def digest(self) -> str:
        """SHA-256 over every stored row (entries and tokens): equal digests mean an unchanged database."""
        h = hashlib.sha256()
        with self._connect() as con:
            for table, order in (("entries", "id"), ("tokens", "token_id"), ("meta", "key"), ("audit", "seq")):
                for row in con.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                    h.update(repr(row).encode())
        return h.hexdigest()

    @staticmethod
    def _row(r: tuple) -> StoredEntry:
        return StoredEntry(id=int(r[0]), content_hash=r[1], submitter=r[2], submitted_utc=r[3],
                           entry=json.loads(r[4]), summary=json.loads(r[5]), identity=r[6], withdrawn=bool(r[7]))
