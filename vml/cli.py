"""The `vml` command line: parse, call one api function, hand its result to render."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from vml import __version__, api, render
from vml.errors import EXIT_DAMAGE, EXIT_FAILURE, EXIT_USAGE, BaseMissing, UsageError, VmlError
from vml.repo import Repository

ALIASES = {"save": "commit", "open": "checkout", "consult": "status"}


class AliasedGroup(click.Group):
    def get_command(self, ctx: click.Context, name: str):
        return super().get_command(ctx, ALIASES.get(name, name))

    def resolve_command(self, ctx, args):
        _name, command, rest = super().resolve_command(ctx, args)
        return command.name, command, rest


class PathsCommand(click.Command):
    """A command that takes `-- PATH...` after its arguments, like git's pathspecs."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            split = args.index("--")
            args, ctx.meta["paths"] = args[:split], tuple(args[split + 1 :])
        else:
            ctx.meta["paths"] = ()
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return super().collect_usage_pieces(ctx) + ["[-- PATH...]"]


def _repo(ctx: click.Context) -> Repository:
    repo = Repository.discover(ctx.obj.get("repo"))
    ctx.call_on_close(repo.close)  # its store's files, when the command is done
    return repo


def _emit(result: object, as_json: bool, show: Callable[..., None]) -> None:
    """A command's result, the one way: JSON for scripts, else `show` writes it as text."""
    render.print_json(result) if as_json else show(result)


def _emit_each(results: list[object], as_json: bool, show: Callable[..., None]) -> None:
    if as_json:
        return render.print_json(results)
    for result in results:
        show(result)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
area_option = click.option("-a", "--area", help="The working area (may be omitted when the repository has one).")
rules_file_option = click.option("--rules", "rules_file", metavar="FILE", type=click.Path(dir_okay=False),
                                 help="Scrub rules in TOML that come before the built-in ones (same id: replaces it).")
dry_run_option = click.option("--dry-run", is_flag=True, help="Report what the scrubber would remove, per file, and make nothing.")
verify_option = click.option("--verify", is_flag=True, help="Refuse public entries (and with checkout or import, the entry itself) "
                                                           "not signed by a key in the allowed signers.")
allowed_signers_option = click.option("--allowed-signers", "allowed", metavar="FILE", type=click.Path(dir_okay=False),
                                      help="The keys you trust, as git's gpg.ssh.allowedSignersFile (default: that setting); implies --verify.")
sign_option = click.option("--sign", is_flag=True, help="Sign the public entry with an SSH key, as git's gpg.format=ssh does.")
key_option = click.option("--key", metavar="FILE", help="With --sign: the SSH key (its private file, or its .pub with the key in ssh-agent); "
                                                         "default: git config user.signingKey.")
strict_option = click.option("--strict", is_flag=True, help="Exit non-zero, making nothing, if the scan finds what no rule covers.")


@click.group(cls=AliasedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", metavar="PATH", help="The repository (default: $VML_REPO, then .vml found upward from here).")
@click.version_option(__version__, prog_name="vml")
@click.pass_context
def main_group(ctx: click.Context, repo: str | None) -> None:
    """vml: version control for virtual-machine environments.

    Save the file tree of a working area as an entry, list and inspect entries, and put
    any entry back exactly. Entries are git commits: `git --git-dir=.vml log --all` shows them.
    """
    ctx.obj = {"repo": repo}


@main_group.command()
@click.argument("path", default=".", required=False)
@click.option("--bare", is_flag=True, help="Make PATH itself a repository with no working area, for sharing "
                                          "(PATH may be s3://BUCKET/PREFIX: a repository in object storage).")
@json_option
def init(path: str, bare: bool, as_json: bool) -> None:
    """Create a repository: PATH/.vml (or PATH itself with --bare)."""
    result = api.init(path, bare=bare)
    _emit(result, as_json, render.init_result)


@main_group.group()
def area() -> None:
    """Add and list working areas."""


@area.command("add")
@click.argument("name")
@click.option("--dir", "directory", metavar="PATH", help="A directory to version (created on first checkout if missing).")
@click.option("--ssh", "ssh", metavar="USER@HOST[:PORT]", help="A live guest reached over SSH (it needs sshd, sh, GNU find and GNU tar).")
@click.option("--identity", metavar="KEY", help="With --ssh: the private key to log in with (default: agent, ~/.ssh/config, ~/.ssh/id_*).")
@click.option("--root", default="/", show_default=True, metavar="PATH", help="With --ssh: the guest directory that is the area's top.")
@click.option("--include", multiple=True, metavar="PATTERN",
              help="Save only these paths (gitignore pattern, repeatable); replaces the default includes.")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Never save these paths (gitignore pattern, repeatable); added to the defaults.")
@click.option("--libvirt", "libvirt_uri", metavar="URI", help="A libvirt domain (qemu:///system, test:///default...): with --domain, or --base to define one.")
@click.option("--domain", metavar="NAME", help="With --libvirt: the existing domain, or the name of the one --base defines (default vml-NAME).")
@click.option("--base", metavar="NAME:VERSION", help="The base image the area's guest was made from (see 'vml base'); entries record it.")
@click.option("--branch", help="The branch the area starts on (default: main, or NAME if main is taken).")
@click.option("--accept-new-host-key", is_flag=True, help="With --ssh: log in now and remember the guest's host key if it is unknown.")
@click.option("--preset", "presets", multiple=True, metavar="NAME[=PATH]",
              help="Also save what a rule preset names (repeatable): cvmfs-cache (the CVMFS cache, /var/lib/cvmfs by default).")
@json_option
@click.pass_context
def area_add(ctx: click.Context, name: str, directory, ssh, identity, root, include, exclude, libvirt_uri, domain, base,
             accept_new_host_key: bool, branch: str | None, presets: tuple[str, ...], as_json: bool) -> None:
    """Add a working area NAME: a directory (--dir), a live guest (--ssh), or a libvirt
    domain (--libvirt URI with --domain NAME, or with --base NAME:VERSION to define a new
    domain on a copy-on-write overlay of that base image; its files are reached with --ssh).

    A guest area saves by default /home, /root, /etc, /usr/local, /opt and /var/lib, and
    never /proc, /sys, /dev, /run, /tmp, /var/cache, /var/tmp, swap files or the CVMFS
    cache (--preset cvmfs-cache saves it); a directory area saves everything.
    'vml area show NAME' prints the rules and the file that holds them.
    """
    options = api.AreaOptions(directory=directory, ssh=ssh, identity=identity, root=root, include=include, exclude=exclude,
                              base=base, libvirt=libvirt_uri, domain=domain, accept_new_host_key=accept_new_host_key, presets=presets)
    info = api.area_add(_repo(ctx), name, options, branch=branch)
    _emit(info, as_json, render.area_info)


@area.command("preset")
@click.argument("preset", metavar="NAME[=PATH]", required=False)
@area_option
@click.option("--remove", is_flag=True, help="Save the area without the preset from its next commit.")
@json_option
@click.pass_context
def area_preset(ctx: click.Context, preset: str | None, area: str | None, remove: bool, as_json: bool) -> None:
    """Save the area with a rule preset from its next commit (without PRESET: list them).

    cvmfs-cache[=PATH]: the CVMFS cache (CVMFS_CACHE_BASE, /var/lib/cvmfs by default), left
    out of a guest by default; saved, a colleague's checkout has the experiment software's
    files at once, and offline. Entries made with a preset say so (vml show).
    """
    if preset is None:
        from vml.areas.presets import PRESETS

        for found in PRESETS.values():
            render.out.print(render.escape(f"{found.name}\t{found.default_path}\t{found.what}"))
        return
    _emit(api.area_preset(_repo(ctx), preset, area=area, remove=remove), as_json, render.area_show)


@main_group.group()
def vm() -> None:
    """Start, stop, suspend, resume and inspect the domains of libvirt areas."""


def _vm_command(action: str, help_text: str):
    @vm.command(action, help=help_text)
    @area_option
    @json_option
    @click.pass_context
    def command(ctx: click.Context, area: str | None, as_json: bool, **options) -> None:
        state = api.vm_action(_repo(ctx), action, area=area, force=options.get("force", False), wait=options.get("wait", False),
                              notice=render.notice)
        _emit(state, as_json, render.vm_state)

    return command


click.option("--wait", is_flag=True, help="Return once the guest answers on SSH (up to VML_SSH_WAIT seconds, 300 by default).")(
    _vm_command("start", "Start the area's domain."))
click.option("--force", is_flag=True, help="Power off at once instead of asking the guest to shut down.")(
    _vm_command("stop", "Shut the area's domain down (the guest is asked to; --force powers it off)."))
_vm_command("suspend", "Pause the area's domain (it keeps its memory; resume continues it).")
_vm_command("resume", "Continue a paused domain.")
click.option("--force", is_flag=True, help="Also undefine a domain vml did not make (an area added with --domain); its disks stay.")(
    _vm_command("delete", "Power the area's domain off, undefine it and delete the disk overlay vml made for it. "
                          "Whatever the guest holds that no entry saved is lost; entries stay, and "
                          "'vml checkout ENTRY --new-vm' makes the VM again."))


@vm.command("info")
@area_option
@json_option
@click.pass_context
def vm_info(ctx: click.Context, area: str | None, as_json: bool) -> None:
    """The state of each libvirt area's domain (or of -a AREA's): state, driver, acceleration, memory."""
    states = api.vm_info(_repo(ctx), area)
    _emit_each(states, as_json, render.vm_state)


@main_group.group()
def image() -> None:
    """Disk images made from entries (P2V: a machine captured over --ssh, made a VM)."""


@image.command("build")
@click.argument("entry")
@click.option("-o", "--output", required=True, metavar="FILE", help="The image to write (qcow2; --raw for raw).")
@click.option("--kernel", metavar="PATH", help="The kernel to boot, a path in the entry (default: /boot's newest vmlinuz-VERSION).")
@click.option("--initrd", metavar="PATH", help="Its initrd, a path in the entry (default: /boot's of the kernel's version).")
@click.option("--cmdline", metavar="TEXT", help=f"The kernel's command line (default: '{'root=/dev/vda rw console=ttyS0'}').")
@click.option("--raw", is_flag=True, help="Write a raw image, not qcow2.")
@click.option("--base", metavar="NAME:VERSION", help="Also store the image, kernel and initrd as this base (vml area add --base boots it).")
@area_option
@json_option
@click.pass_context
def image_build(ctx: click.Context, entry: str, output: str, kernel: str | None, initrd: str | None, cmdline: str | None, raw: bool,
                base: str | None, area: str | None, as_json: bool) -> None:
    """Make a bootable disk image of ENTRY's whole root tree, its kernel and initrd beside it.

    The entry must hold a full root (a machine captured with --include /). The image has
    no bootloader: it boots with the kernel and initrd written beside it (FILE-STEM.vmlinuz,
    FILE-STEM.initrd.img). /etc/fstab mounts /dev/vda as /; the machine's own is kept as
    /etc/fstab.vml-original. Run as root (the files keep their owners).
    """
    with render.progress("writing the tree", enabled=not as_json) as progress:
        result = api.image_build(_repo(ctx), entry, output, kernel=kernel, initrd=initrd, cmdline=cmdline, raw=raw, base=base, area=area,
                                 progress=progress)
    _emit(result, as_json, render.image_result)


@main_group.group()
def share() -> None:
    """Share host folders with a libvirt area's guest (a 9p filesystem vml mounts over SSH).

    A share is part of the domain's definition, so entries record it and 'checkout
    --new-vm' makes it again where the host folder exists (and says which is missing
    where it does not). What is under a share's guest path is host data: commits and
    checkouts of the area leave it alone.
    """


@share.command("add")
@click.argument("host_dir", metavar="HOSTDIR")
@click.argument("guest_path", metavar="GUESTPATH")
@area_option
@click.option("--read-only", is_flag=True, help="The guest may read the folder, not change it.")
@json_option
@click.pass_context
def share_add(ctx: click.Context, host_dir: str, guest_path: str, area: str | None, read_only: bool, as_json: bool) -> None:
    """Share host folder HOSTDIR at GUESTPATH in the guest (mounted when the domain starts;
    QEMU takes no new folder while it runs)."""
    _emit(api.share_add(_repo(ctx), host_dir, guest_path, area=area, read_only=read_only, notice=render.notice), as_json, render.share_result)


@share.command("remove")
@click.argument("which", metavar="GUESTPATH|HOSTDIR|TAG")
@area_option
@json_option
@click.pass_context
def share_remove(ctx: click.Context, which: str, area: str | None, as_json: bool) -> None:
    """Stop sharing a folder: unmounted in the running guest now, gone from the domain."""
    _emit(api.share_remove(_repo(ctx), which, area=area, notice=render.notice), as_json, render.share_result)


@share.command("list")
@area_option
@json_option
@click.pass_context
def share_list(ctx: click.Context, area: str | None, as_json: bool) -> None:
    """The shared folders of each libvirt area's domain (or of -a AREA's)."""
    _emit_each(api.share_list(_repo(ctx), area), as_json, render.share_info)


@share.command("mount")
@area_option
@json_option
@click.pass_context
def share_mount(ctx: click.Context, area: str | None, as_json: bool) -> None:
    """Mount the area's shared folders in its running guest (vml vm start --wait does)."""
    _emit_each(api.share_mount(_repo(ctx), area=area, notice=render.notice), as_json, render.share_result)


@main_group.group()
def base() -> None:
    """Add and list base images: named, versioned, digest-pinned starting points of guests.

    An entry saved in an area made from a base records the base's name, version and
    digest, and costs only what differs from it (the base's data is stored once).
    """


@base.command("add")
@click.argument("name")
@click.argument("version")
@click.option("--image", metavar="FILE", help="A disk image file (raw or qcow2), stored as it is.")
@click.option("--dir", "directory", metavar="DIR", help="A directory tree (an unpacked guest root).")
@click.option("--area", "from_area", metavar="AREA", help="The current files of a working area.")
@click.option("--kernel", metavar="FILE", help="With --image: a kernel to boot it with directly (no bootloader in the image).")
@click.option("--initrd", metavar="FILE", help="With --kernel: its initrd.")
@click.option("--cmdline", metavar="TEXT", help="With --kernel: its command line (e.g. 'root=/dev/vda rw console=ttyS0').")
@json_option
@click.pass_context
def base_add(ctx: click.Context, name: str, version: str, image, directory, from_area, kernel, initrd, cmdline, as_json: bool) -> None:
    """Store base NAME VERSION from exactly one of --image, --dir and --area.

    Domains defined from an image base (vml area add --libvirt URI --base NAME:VERSION)
    boot its kernel directly when it was given --kernel.
    """
    boot = api.BootFiles(kernel, initrd, cmdline)
    with render.progress("storing base", enabled=not as_json) as progress:
        info = api.base_add(_repo(ctx), name, version, image=image, directory=directory, area=from_area, boot=boot, progress=progress)
    _emit(info, as_json, render.base_info)


@base.command("list")
@json_option
@click.pass_context
def base_list(ctx: click.Context, as_json: bool) -> None:
    """List the base images: name, version, digest, source, size, entry."""
    infos = api.base_list(_repo(ctx))
    _emit_each(infos, as_json, render.base_info)


@base.command("fetch")
@click.argument("base_spec", metavar="NAME[:VERSION]")
@json_option
@click.pass_context
def base_fetch(ctx: click.Context, base_spec: str, as_json: bool) -> None:
    """Download base NAME:VERSION from NAME's catalog and store it (NAME alone: the latest).

    Each file (image, kernel, initrd) is checked against the digest the catalog gives
    before it is used; an interrupted fetch goes on from where it stopped when run again.
    """
    _emit(_fetch_base(ctx, base_spec, as_json), as_json, render.base_fetched)


def _fetch_base(ctx: click.Context, spec: str, as_json: bool) -> api.BaseFetchResult:
    with render.progress(f"fetching {spec}", enabled=not as_json, unit="files") as progress:
        return api.base_fetch(_repo(ctx), spec, progress=progress)


@base.group()
def catalog() -> None:
    """Name where a base's versions are published: a JSON catalog over HTTP(S) or file://.

    A catalog names each version's image (and kernel, initrd, command line) with its URL
    and digest; 'vml base fetch NAME:VERSION' downloads one, and a checkout of an entry
    whose base is missing offers to (with --auto-fetch: does).
    """


@catalog.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--auto-fetch", is_flag=True, help="Let a checkout that lacks a version of this base fetch it without asking.")
@click.option("--replace", is_flag=True, help="Replace the catalog NAME has (its URL, --auto-fetch).")
@json_option
@click.pass_context
def catalog_add(ctx: click.Context, name: str, url: str, auto_fetch: bool, replace: bool, as_json: bool) -> None:
    """Name URL as the catalog of base NAME (read now: it must be NAME's)."""
    _emit(api.catalog_add(_repo(ctx), name, url, auto_fetch=auto_fetch, replace=replace), as_json, render.catalog_info)


@catalog.command("list")
@json_option
@click.pass_context
def catalog_list(ctx: click.Context, as_json: bool) -> None:
    """The catalogs named here (none is read)."""
    _emit_each(api.catalog_list(_repo(ctx)), as_json, render.catalog_info)


@catalog.command("show")
@click.argument("name")
@json_option
@click.pass_context
def catalog_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Read NAME's catalog: its versions, and which of them are here."""
    _emit(api.catalog_show(_repo(ctx), name), as_json, render.catalog_info)


@catalog.command("remove")
@click.argument("name")
@json_option
@click.pass_context
def catalog_remove(ctx: click.Context, name: str, as_json: bool) -> None:
    """Forget NAME's catalog (the bases fetched from it stay)."""
    _emit(api.catalog_remove(_repo(ctx), name), as_json, render.catalog_info)


@area.command("remove")
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="Remove it even if it is detached at an entry no branch or tag holds.")
@json_option
@click.pass_context
def area_remove(ctx: click.Context, name: str, force: bool, as_json: bool) -> None:
    """Forget area NAME: its settings, rules and HEAD. Its entries stay; its files, guest
    and domain are not touched."""
    result = api.area_remove(_repo(ctx), name, force=force)
    _emit(result, as_json, render.area_removed)


@area.command("show")
@click.argument("name", required=False)
@json_option
@click.pass_context
def area_show(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Show an area: kind, location, HEAD, settings and its effective include/exclude rules."""
    result = api.area_show(_repo(ctx), name)
    _emit(result, as_json, render.area_show)


@area.command("list")
@json_option
@click.pass_context
def area_list(ctx: click.Context, as_json: bool) -> None:
    """List the working areas: name, kind, location, branch, entry."""
    infos = api.area_list(_repo(ctx))
    _emit_each(infos, as_json, render.area_info)


@main_group.command()
@area_option
@click.option("-m", "--message", required=True, help="What this entry is (like a commit message).")
@click.option("--allow-empty", is_flag=True, help="Record an entry even if nothing changed.")
@click.option("--memory", is_flag=True,
              help="Also save a running libvirt domain's memory with its exact disks (resume it with checkout --resume; never public).")
@click.option("--public", is_flag=True, help="Make a public entry straight from the area, scrubbed as 'vml publish' does (no private "
                                             "entry is made; the area's HEAD stays).")
@click.option("--as", "as_name", metavar="NAME", help="With --public: the lineage refs/public/NAME (default: the area's branch).")
@dry_run_option
@strict_option
@rules_file_option
@sign_option
@key_option
@json_option
@click.pass_context
def commit(ctx: click.Context, area: str | None, message: str, allow_empty: bool, memory: bool, public: bool, as_name: str | None,
           dry_run: bool, strict: bool, rules_file: str | None, sign: bool, key: str | None, as_json: bool) -> None:
    """Save the area's files as a new entry (alias: save). Prints the entry id."""
    if public or as_name or dry_run or strict or rules_file or sign or key:
        if not public or memory or allow_empty:
            raise click.UsageError("--as, --dry-run, --strict, --rules and --sign go with --public; --public goes with neither --memory "
                                   "(memory is never public) nor --allow-empty")
        with render.progress("saving and scrubbing", enabled=not as_json) as progress:
            published = api.commit_public(_repo(ctx), message, area=area, as_name=as_name, dry_run=dry_run, strict=strict,
                                          rules_file=rules_file, sign=sign, key=key, progress=progress)
        _emit(published, as_json, render.publish_result)
        if published.refused or (strict and published.unreviewed):
            sys.exit(EXIT_USAGE)
        return
    with render.progress("saving", enabled=not as_json) as progress:
        result = api.commit(_repo(ctx), message, area=area, allow_empty=allow_empty, memory=memory, progress=progress,
                            notice=render.notice)
    _emit(result, as_json, render.commit_result)


@main_group.command(cls=PathsCommand)
@area_option
@click.option("--all", "all_refs", is_flag=True, help="Entries reachable from every branch, tag and area.")
@click.option("--oneline", is_flag=True, help="One line per entry.")
@click.option("--graph", is_flag=True, help="Draw the history as a graph.")
@click.option("-n", "--max-count", type=int, help="Show at most N entries.")
@json_option
@click.argument("revisions", nargs=-1)
@click.pass_context
def log(ctx, area, all_refs, oneline, graph, max_count, as_json, revisions) -> None:
    """Show entries, newest first (from the area's HEAD, or REVISIONS).

    With `-- PATH...`, only the entries in which one of the paths (a file, or anything
    under a directory) changed.
    """
    repo = _repo(ctx)
    starts = [api.resolve_entry(repo, r, area) for r in revisions] or None
    entries = api.log(repo, area=area, all_refs=all_refs, starts=starts, limit=max_count, paths=ctx.meta["paths"])
    render.print_json(entries) if as_json else render.log_entries(entries, oneline=oneline, graph=graph)


@main_group.command()
@click.argument("entry", default="HEAD")
@area_option
@json_option
@click.pass_context
def show(ctx, entry: str, area: str | None, as_json: bool) -> None:
    """Show an entry: message, area, parent, file count, logical and stored bytes.

    ENTRY:PATH prints one file instead, as git does: entry.toml, env/variables,
    env/history, env/dotfiles/..., vm/domain.xml, or a file of the saved tree.
    """
    if ":" in entry:
        render.raw_bytes(api.show_file(_repo(ctx), entry, area=area))
        return
    result = api.show(_repo(ctx), entry, area=area)
    _emit(result, as_json, render.show_result)


@main_group.command()
@click.argument("entry")
@area_option
@click.option("--to", "to", metavar="DIR", help="Restore into a new or empty directory instead of an area.")
@click.option("-f", "--force", is_flag=True, help="Overwrite changes in the area that no entry holds.")
@click.option("--resume", is_flag=True, help="Restore a libvirt domain from an entry saved with --memory: disks, definition and memory; it runs on.")
@verify_option
@allowed_signers_option
@click.option("--new-vm", is_flag=True,
              help="Make the area's libvirt domain anew from the entry's base image and definition, start it and put the entry's files in it.")
@json_option
@click.pass_context
def checkout(ctx, entry: str, area: str | None, to: str | None, force: bool, resume: bool, verify: bool, allowed: str | None, new_vm: bool,
             as_json: bool) -> None:
    """Put an entry back into an area, exactly (alias: open), or into --to DIR.

    ENTRY is an id (or a prefix of one), a branch or tag name, HEAD, HEAD~2, main^ ...
    Checking out a branch name puts the area on that branch; anything else detaches it.
    """
    def run() -> api.CheckoutResult:
        with render.progress("restoring", enabled=not as_json) as progress:
            return api.checkout(_repo(ctx), entry, area=area, to=to, force=force, resume=resume, new_vm=new_vm, verify=verify,
                                allowed=allowed, progress=progress, notice=render.notice)

    _emit(fetching_missing_base(ctx, as_json, run), as_json, render.checkout_result)


def fetching_missing_base(ctx: click.Context, as_json: bool, run: Callable[[], Any]) -> Any:
    """`run()`; if it lacks a base image that a catalog offers, the base is fetched, when the
    catalog says --auto-fetch or the user says yes at a terminal, and `run()` goes again.
    A script (no terminal) gets the one-line error, which says how to fetch it."""
    try:
        return run()
    except BaseMissing as missing:
        if missing.catalog_url is None or not (missing.auto_fetch or _asked(f"{missing.what}, which this repository lacks; "
                                                                            f"fetch it now from {missing.catalog_url}?")):
            raise
        render.notice(f"fetching base {missing.base} from {missing.catalog_url}")
        fetched = _fetch_base(ctx, missing.base, as_json)
        render.warning(f"base {missing.base} was missing: fetched from {missing.catalog_url} "
                       f"({render.size(fetched.downloaded_bytes)} downloaded, digests checked)")
    return run()


def _asked(question: str) -> bool:
    """The user's yes, asked only at a terminal."""
    return sys.stdin.isatty() and render.err.is_terminal and click.confirm(question, default=False, err=True)


@main_group.command(cls=PathsCommand)
@click.argument("old")
@click.argument("new", required=False)
@area_option
@click.option("--name-status", "form", flag_value="name-status", help="One line per changed path: status letter and path.")
@click.option("--stat", "form", flag_value="stat", help="One line per changed path with old and new size, then totals.")
@click.option("-p", "--patch", is_flag=True, help="A unified diff of every changed regular file's content.")
@click.option("-z", "nul", is_flag=True, help="With --name-status: 'X NUL path NUL' records, paths as their exact bytes.")
@json_option
@click.pass_context
def diff(ctx, old: str, new: str | None, area: str | None, form: str | None, patch: bool, nul: bool, as_json: bool) -> None:
    """Compare entry OLD with entry NEW, or with the area's current files.

    Status letters, as git's: A added, D deleted, M content changed, T type changed (a
    file that became a symlink...; a directory replaced by a file, or the reverse, is the
    old path deleted and the new one added); and vml's own P: properties only (mode, owner,
    mtime, xattrs, inode flags, hardlinks), which git does not use. Subtrees equal on both
    sides are skipped unread.
    With `-- PATH...` only those paths are compared; with a single file PATH whose
    content changed, its unified diff is printed too.

    A path holding a control character, a quote, a backslash or bytes that are not UTF-8
    is printed as git prints it: between double quotes, with C escapes ("new\\nline",
    "raw\\377byte"). --json gives each path losslessly, and its bytes in base64 as
    `path_bytes` when they are not UTF-8; -z gives raw bytes.
    """
    paths = ctx.meta["paths"]
    if nul and form != "name-status":
        raise click.UsageError("-z goes with --name-status")
    auto = None if form is None and not as_json else False
    changes = api.diff(_repo(ctx), old, new, area=area, paths=paths, patch=True if patch else auto)
    if as_json:
        render.print_json(changes)
    elif form == "name-status":
        render.diff_name_status(changes, nul=nul)
    elif form == "stat":
        render.diff_stat(changes)
    else:
        render.diff_changes(changes)


@main_group.command()
@area_option
@click.option("-s", "--short", "short", is_flag=True, help="One 'X path' line per change (letters as in diff --name-status).")
@click.option("-z", "nul", is_flag=True, help="With --short: 'X NUL path NUL' records, paths as their exact bytes.")
@json_option
@click.pass_context
def status(ctx, area: str | None, short: bool, nul: bool, as_json: bool) -> None:
    """Show the area's branch and entry, and what changed since that entry (alias: consult).

    Only files whose size, times, inode or mode changed since the last commit or checkout are read.
    """
    if nul and not short:
        raise click.UsageError("-z goes with --short")
    result = api.status(_repo(ctx), area=area, notice=render.notice)
    render.print_json(result) if as_json else render.status_result(result, short=short, nul=nul)


@main_group.command()
@click.argument("name", required=False)
@click.argument("start", required=False)
@area_option
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete branch NAME (refused if its entries are held nowhere else).")
@click.option("-D", "force_delete", is_flag=True, help="Delete branch NAME even if its entries are held nowhere else.")
@click.option("-l", "--list", "list_only", is_flag=True, help="List branches (the default with no NAME).")
@json_option
@click.pass_context
def branch(ctx, name, start, area, delete, force_delete, list_only, as_json) -> None:
    """List branches, create branch NAME at START (default: the area's entry), or delete one.

    Deleted branches keep their reflog: 'vml reflog NAME' shows them until gc expires it.
    """
    repo = _repo(ctx)
    deleter = (lambda: api.branch_delete(repo, name, force=force_delete)) if delete or force_delete else None
    _named_refs(repo, "branch", name, start, area, deleter, list_only, as_json)


def _named_refs(repo: Repository, kind: str, name, start, area, deleter, list_only: bool, as_json: bool) -> None:
    """What `vml branch` and `vml tag` share: list, create NAME at START, or delete NAME (with `deleter`)."""
    if deleter is not None:
        if not name or start:
            raise click.UsageError(f"give exactly one {kind} NAME to delete")
        result = deleter()
        render.print_json(result) if as_json else render.ref_deleted(kind, result)
    elif name and not list_only:
        result = api.ref_create(repo, kind, name, start, area=area)
        render.print_json(result) if as_json else render.ref_created(kind, result)
    else:
        refs = api.branch_list(repo) if kind == "branch" else api.tag_list(repo)
        _emit(refs, as_json, render.ref_list)


@main_group.command()
@click.argument("name")
@area_option
@click.option("-c", "--create", is_flag=True, help="Create branch NAME at the area's current entry; files are left as they are.")
@click.option("-f", "--force", is_flag=True, help="Overwrite changes in the area that no entry holds.")
@json_option
@click.pass_context
def switch(ctx, name: str, area: str | None, create: bool, force: bool, as_json: bool) -> None:
    """Put the area on branch NAME, checking out its tip (or create NAME with -c)."""
    with render.progress("restoring", enabled=not as_json) as progress:
        result = api.switch(_repo(ctx), name, area=area, create=create, force=force, progress=progress)
    _emit(result, as_json, render.switched_to_new_branch if create else render.checkout_result)


@main_group.command()
@click.argument("name", required=False)
@click.argument("entry", required=False)
@area_option
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete tag NAME.")
@click.option("-l", "--list", "list_only", is_flag=True, help="List tags (the default with no NAME).")
@json_option
@click.pass_context
def tag(ctx, name, entry, area, delete, list_only, as_json) -> None:
    """List tags, tag ENTRY (default: the area's entry) as NAME, or delete a tag."""
    repo = _repo(ctx)
    deleter = (lambda: api.tag_delete(repo, name)) if delete else None
    _named_refs(repo, "tag", name, entry, area, deleter, list_only, as_json)


@main_group.command()
@click.argument("entry")
@area_option
@json_option
@click.pass_context
def rm(ctx, entry: str, area: str | None, as_json: bool) -> None:
    """Drop ENTRY from history; later entries keep their content and are re-parented.

    Every branch and detached area HEAD holding ENTRY is rewritten. The entry stays in
    the reflog (recover it with 'vml branch NAME ID') until gc expires it.
    """
    result = api.rm(_repo(ctx), entry, area=area)
    _emit(result, as_json, render.rm_result)


@main_group.command()
@click.argument("ref", required=False)
@area_option
@click.option("--all", "all_refs", is_flag=True, help="Every reflog: areas, branches (deleted ones too), tags.")
@click.option("-n", "--max-count", type=int, help="Show at most N lines.")
@json_option
@click.pass_context
def reflog(ctx, ref: str | None, area: str | None, all_refs: bool, max_count: int | None, as_json: bool) -> None:
    """Where the area's HEAD (or branch REF) has been, newest first.

    Each line's selector (HEAD@{2}, main@{1}) names that entry in any command.
    """
    lines = api.reflog(_repo(ctx), ref, area=area, all_refs=all_refs, limit=max_count)
    _emit(lines, as_json, render.reflog_lines)


@main_group.command()
@json_option
@click.pass_context
def fsck(ctx, as_json: bool) -> None:
    """Verify every object reachable from every ref and reflog; exit 1 on damage."""
    with render.step_progress("verifying packs", enabled=not as_json) as progress:
        report = api.fsck(_repo(ctx), progress=progress)
    _emit(report, as_json, render.fsck_report)
    if not report.ok:
        sys.exit(EXIT_DAMAGE)


@main_group.command()
@click.option("--expire", metavar="WHEN", help="Forget reflog lines of entries no ref reaches from before WHEN: now, never, 2.weeks, "
                                          "'3 days', 2026-11-01 (default: 30 days).")
@click.option("--remote", "remote_name", metavar="NAME", help="gc the remote NAME, a repository in object storage (s3://), not this one.")
@json_option
@click.pass_context
def gc(ctx, expire: str | None, remote_name: str | None, as_json: bool) -> None:
    """Remove data no branch, tag, area HEAD or reflog line reaches; report the bytes freed.

    Reflog lines older than 90 days expire first, and lines whose entry no ref reaches
    after 30 days (or --expire). A dropped entry or deleted branch is therefore kept for
    30 days; 'vml gc --expire now' frees it at once.

    With --remote NAME (a bucket, s3://): read the entries the remote's refs reach (their
    git objects and listings, into a cache here; not their data), remove what an earlier
    gc found unreachable at least an hour ago and still is, and record what is unreachable
    now for the next run. Pushes may run meanwhile; nothing they count on goes.
    """
    if remote_name is not None:
        if expire is not None:
            raise UsageError("--expire is for this repository's reflogs; a remote has none")
        with render.transfer_progress("reading entries", enabled=not as_json) as progress:
            remote_result = api.gc_remote(_repo(ctx), remote_name, progress=progress)
        _emit(remote_result, as_json, render.remote_gc_result)
        return
    with render.step_progress("repacking", enabled=not as_json) as progress:
        result = api.gc(_repo(ctx), expire=expire, progress=progress)
    _emit(result, as_json, render.gc_result)


# The sharing commands (remotes, push, fetch, pull, clone, bundles, publish) live in
# cli_sharing.py, which adds them to main_group when imported here.
from vml import cli_deploy, cli_server, cli_sharing  # noqa: E402, F401


def main() -> None:
    try:
        main_group(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as problem:
        problem.show()
        sys.exit(problem.exit_code)
    except click.exceptions.Abort:
        render.error("aborted")
        sys.exit(130)
    except VmlError as error:
        render.error(str(error))
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        render.error("interrupted; the repository is unchanged since the last completed step")
        sys.exit(130)
    except OSError as error:
        where = f": {os.fsdecode(error.filename)}" if error.filename else ""
        hint = " (the disk is full; nothing was recorded)" if error.errno == errno.ENOSPC else ""
        render.error(f"{error.strerror or error}{where}{hint}")
        sys.exit(EXIT_FAILURE)
    except Exception as error:  # a bug in vml: say so in one line, traceback on request
        if os.environ.get("VML_DEBUG"):
            raise
        render.error(f"internal error: {type(error).__name__}: {error} (set VML_DEBUG=1 for the traceback)")
        sys.exit(EXIT_FAILURE)
