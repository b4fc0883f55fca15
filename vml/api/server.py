"""vml serve user|token|group (the accounts of a server repository), vml serve gc, and vml login/logout."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from vml.api.remotes import RemoteGcResult
from vml.credentials import forget_token, store_token
from vml.errors import UsageError
from vml.exchange.remote_gc import collect_remote, due_records
from vml.history import live_blobs
from vml.refs.reflogs import UNITS, parse_date
from vml.repo import SERVER_STORE_KEY, Repository
from vml.server.accounts import Accounts, NewToken, TokenInfo, User

__all__ = ["GroupInfo", "LoginResult", "NewToken", "TokenInfo", "User", "group_add", "group_list", "group_member", "group_remove",
           "login", "logout", "serve_gc", "token_add", "token_list", "token_revoke", "user_add", "user_list", "user_remove"]

ACCOUNTS_KEY = "vml.serverAccounts"  # a database several server processes share (vml serve --accounts)
STORE_KEY = SERVER_STORE_KEY

IN = re.compile(r"(\d+)[. ]?(second|minute|hour|day|week|month|year)s?|(\d+)([dwmy])")
SHORT_UNITS = {"d": "day", "w": "week", "m": "month", "y": "year"}


def _accounts(repo: Repository) -> Accounts:
    return Accounts(repo.path, repo.git.config_get(ACCOUNTS_KEY))


def user_add(repo: Repository, name: str, *, admin: bool = False) -> User:
    return _accounts(repo).add_user(name, admin=admin)


def user_remove(repo: Repository, name: str) -> User:
    """Forget a user, their tokens and memberships. Their namespace's entries stay (an admin
    may still read them, and gc keeps them) until its refs are deleted."""
    return _accounts(repo).remove_user(name)


def user_list(repo: Repository) -> list[User]:
    return _accounts(repo).users()


def parse_expiry(text: str, now: float | None = None) -> float:
    """When a token stops working: 30d, 12.hours, 2 weeks, or a date (2027-01-31)."""
    now = time.time() if now is None else now
    value = text.strip().lower()
    relative = IN.fullmatch(value)
    if relative:
        amount, unit = (relative[1], relative[2]) if relative[1] else (relative[3], SHORT_UNITS[relative[4]])
        return now + int(amount) * UNITS[unit]
    when = parse_date(text, "use 30d, 12.hours, 2.weeks or a date like 2027-01-31")
    if when <= now:
        raise UsageError(f"{text} is in the past")
    return when


def token_add(repo: Repository, user: str, *, mode: str = "write", expires: str | None = None, note: str = "") -> NewToken:
    return _accounts(repo).add_token(user, mode=mode, expires=parse_expiry(expires) if expires else None, note=note)


def token_list(repo: Repository, user: str | None = None) -> list[TokenInfo]:
    return _accounts(repo).tokens(user)


def token_revoke(repo: Repository, token_id: str) -> TokenInfo:
    return _accounts(repo).revoke_token(token_id)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    members: dict[str, str]  # user -> role


def group_add(repo: Repository, name: str) -> GroupInfo:
    return GroupInfo(_accounts(repo).add_group(name), {})


def group_remove(repo: Repository, name: str) -> GroupInfo:
    accounts = _accounts(repo)
    members = accounts.groups().get(name, {})
    return GroupInfo(accounts.remove_group(name), members)


def group_list(repo: Repository) -> list[GroupInfo]:
    return [GroupInfo(name, members) for name, members in _accounts(repo).groups().items()]


def group_member(repo: Repository, group: str, user: str, role: str | None) -> GroupInfo:
    """Give USER ROLE (read, append, write) in GROUP's namespace; None takes them out."""
    accounts = _accounts(repo)
    accounts.set_member(group, user, role)
    return GroupInfo(group, accounts.groups()[group])


@dataclass(frozen=True, slots=True)
class LoginResult:
    server: str
    user: str
    mode: str
    path: str  # where the token is kept


def login(url: str, token: str) -> LoginResult:
    """Check a token with the server, then keep it for every URL on that server."""
    from vml.transport.http import ServerUrl  # httpx is loaded only to reach a server

    token = token.strip()
    if not token:
        raise UsageError("no token given (an admin makes one with 'vml serve token add USER')")
    server = url.rstrip("/")
    ServerUrl.parse(server)  # refuses what is not http(s)://HOST...
    try:
        who = _whoami(server, token)
    except UsageError:  # the URL of a namespace: the server is one level up
        parent = ServerUrl.parse(server).server
        if parent == server or not ServerUrl.parse(server).namespace:
            raise
        server, who = parent, _whoami(parent, token)
    if not who.get("user"):
        raise UsageError(f"{server} did not accept the token")
    return LoginResult(server, str(who["user"]), str(who.get("mode")), store_token(server, token, str(who["user"])))


def _whoami(server: str, token: str) -> dict[str, object]:
    from vml.transport.http import HttpRemote

    remote = HttpRemote(server + "/-", token=token)  # "-" stands for a namespace, which the API path leaves out: SERVER/api/v1/whoami
    try:
        return remote.whoami()
    finally:
        remote.close()


def logout(url: str) -> bool:
    from vml.transport.http import ServerUrl

    server = url.rstrip("/")
    return forget_token(server) or forget_token(ServerUrl.parse(server).server)


def serve_gc(repo: Repository) -> RemoteGcResult:
    """gc of the bucket a server keeps its repository in (vml/exchange/remote_gc.py): what
    every ref in the bucket reaches is live, found from this replica (brought up to date
    first; its refs are left to the running server). Then the replica drops the data
    chunks the bucket holds (`BucketStore.trim`)."""
    from vml.server.bucket import BucketStore  # boto3: only for a store in a bucket

    url = repo.git.config_get(STORE_KEY)
    if url is None:
        raise UsageError(f"{repo.path} is not kept in a bucket (vml serve --store): collect it with 'vml gc'")
    bucket = BucketStore(repo, url)
    try:
        due, pending, now = due_records(bucket.remote)  # before the refs are read: see remote_gc.py
        refs = bucket.bucket_refs()
        with repo.shared_lock():  # (another serve gc's trim may be rewriting the replica's packs)
            git = bucket.bring(refs)
            store = bucket.open_store()  # opened after `bring`: what it brought included
            try:
                live = live_blobs(git, store, list(git.walk(sorted(set(refs.values())))))
            finally:
                store.close()
        stats = collect_remote(bucket.remote, due, pending, now, live, repo.temp_dir())
        trimmed = bucket.trim()
    finally:
        bucket.close()
    return RemoteGcResult.of("", url, stats, trimmed.bytes_freed)
