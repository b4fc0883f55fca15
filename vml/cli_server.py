"""The `vml serve` commands (a server, its users, tokens and groups) and `vml login`/`logout`
(imported by cli.py, which they add themselves to)."""

from __future__ import annotations

import datetime
import getpass
import os
import sys

import click

from vml import render
from vml.cli import _emit, _emit_each, _repo, json_option, main_group
from vml.errors import UsageError
from vml.lazy import lazy_module
from vml.render import escape, out
from vml.repo import Repository

api_server = lazy_module("vml.api.server")  # (the server's modules load only for its commands)


class ServeGroup(click.Group):
    """`vml serve [REPO] [options]` starts a server; `vml serve user|token|group ...` manages
    its accounts. A first word that is no subcommand is the REPO of `vml serve REPO`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@main_group.group(cls=ServeGroup)
def serve() -> None:
    """Share a repository over HTTP with many users: `vml serve [REPO] --listen HOST:PORT`.

    Each user has a private namespace (http://HOST:PORT/USER: only they and admins read or
    write it); a group is a namespace whose members have a role (read, append or write);
    public entries of every namespace are readable by every user (and with
    --anonymous-public by anyone). Users log in with a token: `vml serve token add USER`
    makes one, `vml login URL` keeps it. The accounts live in REPO/vml/server.db.

    \b
    vml serve [REPO] options (all: vml serve start --help):
      --listen HOST:PORT     where to serve (default 127.0.0.1:8080; other than loopback needs TLS)
      --cert FILE --key FILE serve https
      --anonymous-public     anyone may read public entries without a token
      --init                 make REPO a new bare repository if it does not exist
      --store s3://B/P       keep the repository in a bucket (REPO: this process's replica;
                             several processes may serve one bucket: docs/SERVER.md)
      --accounts FILE        an accounts database the processes of one bucket share
    vml serve gc [REPO]      remove what no ref reaches from the bucket (with --store)
    """


def _server_repository(ctx: click.Context, path: str | None) -> Repository:
    if path is None:
        return _repo(ctx)
    repo = Repository.discover(path)
    ctx.call_on_close(repo.close)
    return repo


@serve.command("start", hidden=True)
@click.argument("path", metavar="[REPO]", required=False)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT", help="The address to serve on.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM): serve https.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM), with --cert.")
@click.option("--anonymous-public", is_flag=True, help="Let anyone without a token read public entries.")
@click.option("--init", "create", is_flag=True, help="Make REPO a new bare repository if it does not exist.")
@click.option("--store", metavar="s3://BUCKET/PREFIX", help="Keep the repository in a bucket, REPO being this process's replica of it "
                                                          "(several processes may serve one bucket; remembered in REPO).")
@click.option("--accounts", type=click.Path(dir_okay=False), metavar="FILE",
              help="The accounts database, shared by the server processes of one bucket (default REPO/vml/server.db; remembered).")
@click.option("--no-access-log", is_flag=True, help="Do not log each request (a request line never holds a token).")
@click.pass_context
def serve_start(ctx: click.Context, path: str | None, listen: str, cert: str | None, key: str | None, anonymous_public: bool,
                create: bool, store: str | None, accounts: str | None, no_access_log: bool) -> None:
    """Serve REPO (default: the current repository) until interrupted."""
    from vml.server.run import serve as run_server  # uvicorn and starlette: only for a server

    if create and path is not None and not os.path.exists(os.path.join(path, "vml", "format")):
        Repository.init(path, bare=True).close()
        render.notice(f"made a new repository {os.path.abspath(path)}")
    repo = _server_repository(ctx, path)
    if store is not None and repo.git.config_get(api_server.STORE_KEY) is None and repo.git.ref_names("refs/namespaces/"):
        raise UsageError(f"{repo.path} holds entries of its own: serve the bucket from a new REPO (a replica starts empty) "
                         f"and push the entries there")
    store = _remembered(repo, api_server.STORE_KEY, store)
    accounts = _remembered(repo, api_server.ACCOUNTS_KEY, accounts and os.path.abspath(accounts))
    if store is not None:
        from vml.server.bucket import BucketStore  # boto3: only for a store in a bucket

        if BucketStore.create(store):
            render.notice(f"made a new repository in {store}")
    if not api_server.user_list(repo):
        render.notice(f"no users yet: vml --repo {repo.path} serve user add NAME --admin; then vml serve token add NAME")

    def ready(url: str) -> None:
        kept = f" (kept in {store})" if store else ""
        out.print(escape(f"vml serve: {repo.path}{kept} at {url}/NAMESPACE (Ctrl-C stops)"))
        sys.stdout.flush()

    run_server(repo.path, listen, cert=cert, key=key, anonymous_public=anonymous_public, access_log=not no_access_log, ready=ready,
               store=store, accounts=accounts)


def _remembered(repo: Repository, key: str, given: str | None) -> str | None:
    """A setting given now (kept in REPO's config for the next start), else the one kept."""
    kept = repo.git.config_get(key)
    if given is not None and given != kept:
        if kept is not None:
            raise UsageError(f"{repo.path} serves {kept} ({key}); it cannot change to {given}")
        repo.git.config_set(key, given)
        return given
    return kept


@serve.command("gc")
@click.argument("path", metavar="[REPO]", required=False)
@json_option
@click.pass_context
def serve_gc(ctx: click.Context, path: str | None, as_json: bool) -> None:
    """Remove from a server's bucket (vml serve --store) what no ref there reaches.

    Safe beside running servers and pushes: what is unreachable is recorded now and removed
    by a run at least an hour later if it still is (as 'vml gc --remote'). A repository
    not kept in a bucket is collected with 'vml gc'.
    """
    result = api_server.serve_gc(_server_repository(ctx, path))
    _emit(result, as_json, render.remote_gc_result)


# -- users


@serve.group("user")
def serve_user() -> None:
    """Add, remove and list the users of a server repository (--repo PATH, or the current one)."""


def _show_user(user: api_server.User) -> None:
    groups = ", ".join(f"{group} ({role})" for group, role in user.groups.items())
    out.print(f"{user.name}{'  admin' if user.admin else ''}{'  groups: ' + groups if groups else ''}")


@serve_user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May read and write every namespace and see every user.")
@json_option
@click.pass_context
def user_add(ctx: click.Context, name: str, admin: bool, as_json: bool) -> None:
    """Add user NAME (and with it namespace NAME)."""
    _emit(api_server.user_add(_repo(ctx), name, admin=admin), as_json, _show_user)


@serve_user.command("remove")
@click.argument("name")
@json_option
@click.pass_context
def user_remove(ctx: click.Context, name: str, as_json: bool) -> None:
    """Remove user NAME, their tokens and memberships (their namespace's entries stay)."""
    _emit(api_server.user_remove(_repo(ctx), name), as_json, _show_user)


@serve_user.command("list")
@json_option
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List users, admins and their groups."""
    _emit_each(api_server.user_list(_repo(ctx)), as_json, _show_user)


# -- tokens


@serve.group("token")
def serve_token() -> None:
    """Make, list and revoke the tokens users log in with."""


def _when(stamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M") if stamp else "-"


def _show_token(token: api_server.TokenInfo) -> None:
    state = token.state(datetime.datetime.now().timestamp())
    out.print(escape(f"{token.id}  {token.user}  {token.mode}  {state}  expires {_when(token.expires)}  last used {_when(token.last_used)}"
                     + (f"  {token.note}" if token.note else "")))


def _show_new_token(new: api_server.NewToken) -> None:
    _show_token(new.info)
    out.print(new.secret, soft_wrap=True)
    render.notice(f"this is the only time the token is shown: give it to {new.info.user}, who runs 'vml login URL' with it")


@serve_token.command("add")
@click.argument("user")
@click.option("--read-only", "mode", flag_value="read-only", help="May only read (fetch, clone, browse).")
@click.option("--append-only", "mode", flag_value="append-only", help="May read and add entries, never move a ref back or elsewhere.")
@click.option("--expires", metavar="WHEN", help="Stop working after WHEN: 30d, 12.hours, 2.weeks or a date (default: never).")
@click.option("--note", default="", help="What the token is for (shown in lists).")
@json_option
@click.pass_context
def token_add(ctx: click.Context, user: str, mode: str | None, expires: str | None, note: str, as_json: bool) -> None:
    """Make a token for USER and print it once (it is stored hashed, argon2id)."""
    _emit(api_server.token_add(_repo(ctx), user, mode=mode or "write", expires=expires, note=note), as_json, _show_new_token)


@serve_token.command("list")
@click.argument("user", required=False)
@json_option
@click.pass_context
def token_list(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """List tokens (of USER): id, user, mode, state, expiry, last use. Never the secret."""
    _emit_each(api_server.token_list(_repo(ctx), user), as_json, _show_token)


@serve_token.command("revoke")
@click.argument("token_id", metavar="ID")
@json_option
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str, as_json: bool) -> None:
    """Revoke a token (its id, or the whole token): it stops working at once."""
    _emit(api_server.token_revoke(_repo(ctx), token_id), as_json, _show_token)


# -- groups


@serve.group("group")
def serve_group() -> None:
    """Groups: namespaces whose members read (read), add entries (append) or also rewrite (write)."""


def _show_group(group: api_server.GroupInfo) -> None:
    members = ", ".join(f"{user} ({role})" for user, role in group.members.items())
    out.print(f"{group.name}  {members or '(no members)'}")


@serve_group.command("add")
@click.argument("name")
@json_option
@click.pass_context
def group_add(ctx: click.Context, name: str, as_json: bool) -> None:
    """Add group NAME (and with it namespace NAME)."""
    _emit(api_server.group_add(_repo(ctx), name), as_json, _show_group)


@serve_group.command("remove")
@click.argument("name")
@json_option
@click.pass_context
def group_remove(ctx: click.Context, name: str, as_json: bool) -> None:
    """Remove group NAME (its namespace's entries stay, readable by admins)."""
    _emit(api_server.group_remove(_repo(ctx), name), as_json, _show_group)


@serve_group.command("list")
@json_option
@click.pass_context
def group_list(ctx: click.Context, as_json: bool) -> None:
    """List groups and their members' roles."""
    _emit_each(api_server.group_list(_repo(ctx)), as_json, _show_group)


@serve_group.command("member")
@click.argument("group")
@click.argument("user")
@click.option("--role", type=click.Choice(["read", "append", "write"]), default="read", show_default=True,
              help="read: fetch; append: also add entries; write: also move refs anywhere (forced pushes).")
@click.option("--remove", is_flag=True, help="Take USER out of GROUP.")
@json_option
@click.pass_context
def group_member(ctx: click.Context, group: str, user: str, role: str, remove: bool, as_json: bool) -> None:
    """Give USER a role in GROUP (or --remove them)."""
    _emit(api_server.group_member(_repo(ctx), group, user, None if remove else role), as_json, _show_group)


# -- the client's side


@main_group.command()
@click.argument("url")
@click.option("--token-stdin", is_flag=True, help="Read the token from standard input (default: ask for it, unechoed).")
@json_option
def login(url: str, token_stdin: bool, as_json: bool) -> None:
    """Keep a token for the vml server at URL (http(s)://HOST[:PORT]), after checking it there.

    It is stored in ~/.config/vml/credentials.toml (mode 0600) and sent only in a header,
    never in a URL, and never over plain HTTP except to this machine. VML_TOKEN, when set,
    is used instead for every server.
    """
    if token_stdin or not sys.stdin.isatty():
        token = sys.stdin.readline()
    else:
        token = getpass.getpass("token: ")
    result = api_server.login(url, token)
    _emit(result, as_json, lambda r: out.print(escape(f"logged in to {r.server} as {r.user} ({r.mode}); token kept in {r.path}")))


@main_group.command()
@click.argument("url")
def logout(url: str) -> None:
    """Forget the token kept for the server at URL."""
    if not api_server.logout(url):
        raise UsageError(f"no token is kept for {url}")
    out.print(escape(f"logged out of {url}"))
