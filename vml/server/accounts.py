"""Users, groups and tokens of a server, in SQLite (the repository's vml/server.db).

The one home of sqlite3 and of argon2. A token is `vml_<id>_<secret>`: the id finds its row,
the secret is checked against an argon2id hash of it; the secret itself is never stored.
A user name and a group name share one space: each is a namespace (vml/server/access.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from vml.errors import UsageError

DATABASE = "vml/server.db"
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
RESERVED = {"api", "static", "login", "logout", "admin", "users", "groups", "settings", "health", "help", "new"}
READ, APPEND, WRITE = "read", "append", "write"
ROLES = (READ, APPEND, WRITE)  # each includes the ones before it
TOKEN_MODES = {"write": WRITE, "read-only": READ, "append-only": APPEND}
TOKEN = re.compile(r"vml_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, admin INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('read', 'append', 'write')),
    PRIMARY KEY (group_name, user));
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('read', 'append', 'write')),
    note TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    last_used REAL);
"""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    admin: bool
    created: float
    groups: dict[str, str]  # group -> role


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    user: str
    mode: str  # write, read-only, append-only
    note: str
    created: float
    expires: float | None
    revoked: float | None
    last_used: float | None

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewToken:
    info: TokenInfo
    secret: str  # shown once; only its hash is kept


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: a user and the most their token allows, or nobody (anonymous)."""

    user: str | None
    admin: bool = False
    groups: tuple[tuple[str, str], ...] = ()  # (group, role)
    limit: str = WRITE  # the token's mode as a role: no request does more, whatever the user may
    token: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.user is None


ANONYMOUS = Caller(None, limit=READ)
_MODE_OF_ROLE = {role: mode for mode, role in TOKEN_MODES.items()}


def mode_of(role: str) -> str:
    """A token's mode (write, read-only, append-only) from the role it caps at."""
    return _MODE_OF_ROLE[role]


def check_name(name: str, what: str = "name") -> str:
    if not NAME.fullmatch(name) or name in RESERVED:
        raise UsageError(f"{name!r} is not a valid {what}: a lowercase letter, then up to 31 lowercase letters, digits, '-' or '_'"
                         + (" (and not a reserved word)" if name in RESERVED else ""))
    return name


class Accounts:
    """The server's database. Every method opens its own connection: requests run on many
    threads, and SQLite serializes writers itself (WAL, a busy timeout)."""

    def __init__(self, repository_path: str, path: str | None = None):
        """`path`: a database shared by several server processes (default REPO/vml/server.db)."""
        self.path = path or os.path.join(repository_path, DATABASE)
        self._hasher = PasswordHasher()
        self._checked: dict[str, bytes] = {}  # token id -> a fast digest of a secret argon2 already accepted
        self._checked_lock = threading.Lock()
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db:
            os.chmod(self.path, 0o600)  # token hashes: for the server's eyes only
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # -- users

    def add_user(self, name: str, *, admin: bool = False) -> User:
        check_name(name, "user name")
        with self._connect() as db:
            if db.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone():
                raise UsageError(f"{name!r} is already a group's name (users and groups share one set of namespaces)")
            try:
                db.execute("INSERT INTO users (name, admin, created) VALUES (?, ?, ?)", (name, int(admin), time.time()))
            except sqlite3.IntegrityError:
                raise UsageError(f"user {name!r} exists already") from None
        return self.user(name)

    def remove_user(self, name: str) -> User:
        user = self.user(name)
        with self._connect() as db:
            db.execute("DELETE FROM users WHERE name = ?", (name,))  # its tokens and memberships go with it
        self._forget_checked()
        return user

    def set_admin(self, name: str, admin: bool) -> User:
        self.user(name)
        with self._connect() as db:
            db.execute("UPDATE users SET admin = ? WHERE name = ?", (int(admin), name))
        return self.user(name)

    def user(self, name: str) -> User:
        with self._connect() as db:
            row = db.execute("SELECT name, admin, created FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise UsageError(f"no user {name!r} (vml serve user add {name})")
            groups = dict(db.execute("SELECT group_name, role FROM members WHERE user = ? ORDER BY group_name", (name,)).fetchall())
        return User(row[0], bool(row[1]), row[2], groups)

    def users(self) -> list[User]:
        with self._connect() as db:
            names = [row[0] for row in db.execute("SELECT name FROM users ORDER BY name")]
        return [self.user(name) for name in names]

    # -- groups

    def add_group(self, name: str) -> str:
        check_name(name, "group name")
        with self._connect() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UsageError(f"{name!r} is already a user's name (users and groups share one set of namespaces)")
            try:
                db.execute("INSERT INTO groups (name, created) VALUES (?, ?)", (name, time.time()))
            except sqlite3.IntegrityError:
                raise UsageError(f"group {name!r} exists already") from None
        return name

    def remove_group(self, name: str) -> str:
        with self._connect() as db:
            if db.execute("DELETE FROM groups WHERE name = ?", (name,)).rowcount == 0:
                raise UsageError(f"no group {name!r}")
        return name

    def groups(self) -> dict[str, dict[str, str]]:
        """group -> {member: role}"""
        with self._connect() as db:
            found: dict[str, dict[str, str]] = {row[0]: {} for row in db.execute("SELECT name FROM groups ORDER BY name")}
            for group, user, role in db.execute("SELECT group_name, user, role FROM members ORDER BY group_name, user"):
                found[group][user] = role
        return found

    def set_member(self, group: str, user: str, role: str | None) -> None:
        """Give `user` `role` in `group`; None removes them from it."""
        if role is not None and role not in ROLES:
            raise UsageError(f"{role!r} is not a role (read, append or write)")
        self.user(user)
        with self._connect() as db:
            if not db.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone():
                raise UsageError(f"no group {group!r} (vml serve group add {group})")
            if role is None:
                if db.execute("DELETE FROM members WHERE group_name = ? AND user = ?", (group, user)).rowcount == 0:
                    raise UsageError(f"{user} is not a member of {group}")
            else:
                db.execute("INSERT INTO members (group_name, user, role) VALUES (?, ?, ?) "
                           "ON CONFLICT (group_name, user) DO UPDATE SET role = excluded.role", (group, user, role))

    def is_namespace(self, name: str) -> bool:
        with self._connect() as db:
            return bool(db.execute("SELECT 1 FROM users WHERE name = ? UNION SELECT 1 FROM groups WHERE name = ?", (name, name)).fetchone())

    def namespaces(self) -> list[str]:
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT name FROM users UNION SELECT name FROM groups ORDER BY 1")]

    # -- tokens

    def add_token(self, user: str, *, mode: str = "write", expires: float | None = None, note: str = "") -> NewToken:
        if mode not in TOKEN_MODES:
            raise UsageError(f"{mode!r} is not a token mode ({', '.join(TOKEN_MODES)})")
        self.user(user)
        token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(12))
        secret = secrets.token_urlsafe(32)
        now = time.time()
        with self._connect() as db:
            db.execute("INSERT INTO tokens (id, user, hash, role, note, created, expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (token_id, user, self._hasher.hash(secret), TOKEN_MODES[mode], note, now, expires))
        return NewToken(self.token(token_id), f"vml_{token_id}_{secret}")

    def token(self, token_id: str) -> TokenInfo:
        with self._connect() as db:
            row = db.execute("SELECT id, user, role, note, created, expires, revoked, last_used FROM tokens WHERE id = ?",
                             (token_id,)).fetchone()
        if row is None:
            raise UsageError(f"no token {token_id!r}")
        return TokenInfo(row[0], row[1], mode_of(row[2]), *row[3:])

    def tokens(self, user: str | None = None) -> list[TokenInfo]:
        with self._connect() as db:
            ids = [row[0] for row in db.execute("SELECT id FROM tokens WHERE ? IS NULL OR user = ? ORDER BY created", (user, user))]
        return [self.token(token_id) for token_id in ids]

    def revoke_token(self, token_id: str) -> TokenInfo:
        token_id = token_id.split("_")[1] if token_id.startswith("vml_") else token_id  # the whole token pasted: its id
        with self._connect() as db:
            if db.execute("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), token_id)).rowcount == 0:
                self.token(token_id)  # no such token: says so
        self._forget_checked()
        return self.token(token_id)

    def authenticate(self, token: str) -> Caller | None:
        """The caller a token stands for; None for a malformed, unknown, wrong, expired or
        revoked token (all alike: the answer says nothing about which)."""
        match = TOKEN.fullmatch(token)
        if match is None:
            return None
        token_id, secret = match.groups()
        now = time.time()
        with self._connect() as db:
            row = db.execute("SELECT t.hash, t.role, t.expires, t.revoked, u.name, u.admin FROM tokens t JOIN users u ON u.name = t.user "
                             "WHERE t.id = ?", (token_id,)).fetchone()
            if row is None:
                self._hasher.hash(secret)  # as long as a real check: the time says nothing either
                return None
            stored, role, expires, revoked, user, admin = row
            if revoked is not None or (expires is not None and expires <= now) or not self._secret_matches(token_id, secret, stored):
                return None
            db.execute("UPDATE tokens SET last_used = ? WHERE id = ? AND (last_used IS NULL OR last_used < ?)", (now, token_id, now - 60))
            groups = tuple(db.execute("SELECT group_name, role FROM members WHERE user = ? ORDER BY group_name", (user,)).fetchall())
        return Caller(user, bool(admin), groups, role, token_id)

    def _secret_matches(self, token_id: str, secret: str, stored: str) -> bool:
        digest = hashlib.blake2b(secret.encode(), key=token_id.encode()).digest()
        with self._checked_lock:
            known = self._checked.get(token_id)
        if known is not None:
            return hmac.compare_digest(known, digest)
        try:
            self._hasher.verify(stored, secret)
        except (VerificationError, InvalidHashError):
            return False
        with self._checked_lock:  # argon2 once per token and process: a push makes dozens of requests
            self._checked[token_id] = digest
        return True

    def _forget_checked(self) -> None:
        with self._checked_lock:
            self._checked.clear()
