"""The `vml` commands that share entries: remotes, push, fetch, pull, clone, export, import
and publish (imported by cli.py, which they add themselves to)."""

from __future__ import annotations

import sys

import click

from vml import api, render
from vml.cli import (
    _emit,
    _emit_each,
    _repo,
    allowed_signers_option,
    area_option,
    dry_run_option,
    fetching_missing_base,
    json_option,
    key_option,
    main_group,
    rules_file_option,
    sign_option,
    strict_option,
    verify_option,
)
from vml.errors import EXIT_USAGE

# -- remotes

accept_key_option = click.option(
    "--accept-new-host-key", is_flag=True,
    help="Trust an ssh host whose key is not yet in known_hosts, and remember it there.",
)


@main_group.group(invoke_without_command=True)
@json_option
@click.pass_context
def remote(ctx: click.Context, as_json: bool) -> None:
    """Add, remove and list remotes (another repository: a path, file://, ssh://, s3:// or a vml server's http(s):// URL)."""
    if ctx.invoked_subcommand is None:
        _print_remotes(ctx, as_json)


def _print_remotes(ctx: click.Context, as_json: bool) -> None:
    infos = api.remote_list(_repo(ctx))
    _emit_each(infos, as_json, render.remote_info)


@remote.command("add")
@click.argument("name")
@click.argument("url")
@json_option
@click.pass_context
def remote_add(ctx: click.Context, name: str, url: str, as_json: bool) -> None:
    """Add remote NAME at URL: PATH, file:///PATH, ssh://[user@]host[:port]/PATH, a vml
    server's http(s)://HOST[:PORT]/NAMESPACE, or s3://BUCKET/PREFIX (a bucket made with
    'vml init --bare s3://BUCKET/PREFIX'; endpoint and keys from the AWS configuration:
    AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config)."""
    info = api.remote_add(_repo(ctx), name, url)
    _emit(info, as_json, render.remote_info)


@remote.command("remove")
@click.argument("name")
@json_option
@click.pass_context
def remote_remove(ctx: click.Context, name: str, as_json: bool) -> None:
    """Forget remote NAME and its remote-tracking branches (the remote itself is untouched)."""
    info = api.remote_remove(_repo(ctx), name)
    _emit(info, as_json, render.remote_info)


@remote.command("list")
@json_option
@click.pass_context
def remote_list(ctx: click.Context, as_json: bool) -> None:
    """List remotes: name and URL."""
    _print_remotes(ctx, as_json)


@main_group.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin", required=False)
@click.argument("names", metavar="[BRANCH|TAG]...", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Move remote refs even when it is not a fast-forward (entries only the old ref "
                                                     "reached are then dropped there by its next gc).")
@click.option("--tags", is_flag=True, help="Push every tag as well.")
@click.option("--differential", is_flag=True,
              help="Do not send the base images the entries sit on: the remote must have them (checked by digest).")
@area_option
@accept_key_option
@json_option
@click.pass_context
def push(ctx, remote_name: str, names: tuple[str, ...], force: bool, tags: bool, differential: bool, area: str | None,
         accept_new_host_key: bool, as_json: bool) -> None:
    """Send entries to REMOTE (default origin): the area's branch, or the BRANCHes and TAGs named.

    Only the entries and objects the remote lacks are sent, in packs. The base images the
    entries sit on are sent too if the remote lacks them (not with --differential). A ref
    moves only if the remote's entry is an ancestor of yours (a fast-forward) unless
    --force; a rejected ref exits with status 2 and changes nothing of that ref.
    """
    with render.transfer_progress("pushing", enabled=not as_json) as progress:
        result = api.push(_repo(ctx), remote_name, names, force=force, tags=tags, area=area, differential=differential,
                          accept_new_host_key=accept_new_host_key, progress=progress)
    _emit(result, as_json, render.push_result)
    if result.rejected:
        sys.exit(EXIT_USAGE)


@main_group.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin", required=False)
@accept_key_option
@verify_option
@allowed_signers_option
@json_option
@click.pass_context
def fetch(ctx, remote_name: str, accept_new_host_key: bool, verify: bool, allowed: str | None, as_json: bool) -> None:
    """Receive the entries of REMOTE (default origin) this repository lacks.

    The remote's branches become remote-tracking branches REMOTE/BRANCH (e.g. origin/main,
    usable wherever an entry is expected); its tags become local tags unless one of that
    name exists; its public entries (public/NAME) are added or fast-forwarded. No area
    changes. With --verify (or git config vml.verifySignatures true), no ref moves unless
    every public entry it would name is signed by a key in the allowed signers.
    """
    with render.transfer_progress("fetching", enabled=not as_json) as progress:
        result = api.fetch(_repo(ctx), remote_name, accept_new_host_key=accept_new_host_key, verify=verify, allowed=allowed, progress=progress)
    _emit(result, as_json, render.fetch_result)


@main_group.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin", required=False)
@click.argument("branch", required=False)
@area_option
@accept_key_option
@json_option
@click.pass_context
def pull(ctx, remote_name: str, branch: str | None, area: str | None, accept_new_host_key: bool, as_json: bool) -> None:
    """Fetch from REMOTE, fast-forward the area's branch to REMOTE/BRANCH and check it out.

    BRANCH defaults to the area's own branch. Changes in the area not saved in an entry
    stop the pull (as they stop a checkout); a branch that has diverged from the remote's
    is never merged: the message says how to keep both.
    """
    enabled = not as_json
    with render.transfer_progress("fetching", enabled=enabled) as transfer, render.progress("restoring", enabled=enabled) as progress:
        result = api.pull(_repo(ctx), remote_name, branch, area=area, accept_new_host_key=accept_new_host_key,
                          progress=progress, transfer_progress=transfer)
    _emit(result, as_json, render.pull_result)


@main_group.command()
@click.argument("url")
@click.argument("directory", required=False)
@accept_key_option
@verify_option
@allowed_signers_option
@json_option
def clone(url: str, directory: str | None, accept_new_host_key: bool, verify: bool, allowed: str | None, as_json: bool) -> None:
    """Make DIRECTORY/.vml a copy of the repository at URL, with `origin` set to it.

    DIRECTORY defaults to the last part of URL. Every branch and tag is fetched; the
    remote's default branch becomes a local branch. Add an area and check it out to get
    the files.
    """
    with render.transfer_progress("cloning", enabled=not as_json) as progress:
        result = api.clone(url, directory, accept_new_host_key=accept_new_host_key, verify=verify, allowed=allowed, progress=progress)
    _emit(result, as_json, render.clone_result)


# -- bundles


@main_group.command("export")
@click.argument("entry")
@click.option("-o", "--output", required=True, metavar="FILE|s3://BUCKET/KEY", help="The bundle file to write, or an object in a bucket.")
@click.option("--full", "kind", flag_value="full", default=True, help="The entry and all its history: needs nothing (default).")
@click.option("--incremental", "kind", flag_value="incremental", help="Only what is new since the entry's parent, which the receiver must have.")
@click.option("--differential", "kind", flag_value="differential", help="The entry and its history, without the data of its base image: the "
                                                                               "receiver must have that base (checked by digest).")
@click.option("--since", metavar="REF", help="Only what is new since entry REF, which the receiver must have.")
@area_option
@json_option
@click.pass_context
def export_command(ctx, entry: str, output: str, kind: str, since: str | None, area: str | None, as_json: bool) -> None:
    """Write ENTRY to one bundle file that 'vml import' reads elsewhere.

    The bundle lists the entries it requires; import refuses it, naming them, where they
    are missing. ENTRY's branch or tag name travels with it.
    """
    result = api.export(_repo(ctx), entry, output, kind=kind, since=since, area=area)
    _emit(result, as_json, render.export_result)


@main_group.command("import")
@click.argument("bundle", metavar="FILE|URL")
@click.option("--as", "as_name", metavar="BRANCH", help="Put the entry on this branch instead of the name it was exported with.")
@click.option("-f", "--force", is_flag=True, help="Move the branch or tag even if the entry does not descend from where it is.")
@verify_option
@allowed_signers_option
@json_option
@click.pass_context
def import_command(ctx, bundle: str, as_name: str | None, force: bool, verify: bool, allowed: str | None, as_json: bool) -> None:
    """Check bundle FILE whole (what it requires, every hash), then store its entries.

    A URL is a bundle a vml server offers (its page's "download bundle"), downloaded first
    with the token kept by 'vml login' for that server, or an object in a bucket
    (s3://BUCKET/KEY, with the AWS configuration: AWS_ENDPOINT_URL, AWS_PROFILE, ...).

    Nothing is written if any check fails. The entry's branch or tag is created, or moved
    if the entry descends from where it is.
    """
    result = fetching_missing_base(ctx, as_json, lambda: api.import_bundle(_repo(ctx), bundle, as_name=as_name, force=force, verify=verify,
                                                                           allowed=allowed))
    _emit(result, as_json, render.import_result)


# -- public entries



@main_group.command()
@click.argument("entry")
@click.option("--as", "as_name", metavar="NAME", help="The public lineage: refs/public/NAME (default: ENTRY's branch, or the area's).")
@click.option("-m", "--message", help="The public entry's message (default: the entry's own, scanned for secrets).")
@dry_run_option
@strict_option
@rules_file_option
@sign_option
@key_option
@area_option
@json_option
@click.pass_context
def publish(ctx, entry: str, as_name: str | None, message: str | None, dry_run: bool, strict: bool, rules_file: str | None,
            sign: bool, key: str | None, area: str | None, as_json: bool) -> None:
    """Make a public entry from ENTRY, safe to share: on refs/public/NAME (shown public/NAME).

    The entry's files stream through a scrubber: path rules drop credential files (SSH and
    grid keys, tokens, keyrings...), redactors keep files valid while removing what they hold
    (shadow hashes become '!', fstab loses password=, variables keep their names), and a
    content scan replaces private keys and tokens found anywhere. A public entry's parents are
    only earlier public entries: nothing private is reachable from it. It carries a report of
    what was removed (never the values) that a checkout shows. Push it with
    'vml push REMOTE public/NAME'.
    """
    with render.progress("scrubbing", enabled=not as_json) as progress:
        result = api.publish(_repo(ctx), entry, as_name=as_name, message=message, dry_run=dry_run, strict=strict,
                             rules_file=rules_file, area=area, sign=sign, key=key, progress=progress)
    _emit(result, as_json, render.publish_result)
    if result.refused or (strict and result.unreviewed):
        sys.exit(EXIT_USAGE)
