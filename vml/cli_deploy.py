"""The `vml` commands that run entries on other libvirt hosts: deploy, deploy list, release
(imported by cli.py, which they add themselves to)."""

from __future__ import annotations

import click

from vml import api, render
from vml.cli import _emit, _emit_each, _repo, area_option, fetching_missing_base, json_option, main_group


class _DeployGroup(click.Group):
    """`vml deploy ENTRY ...` runs the group's `new` command; `vml deploy list` lists."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["new", *args]
        return super().parse_args(ctx, args)


@main_group.group(cls=_DeployGroup)
def deploy() -> None:
    """Run an entry on other libvirt hosts: vml deploy ENTRY --host URI [--count N].

    Each host gets the entry once, as three volumes in a storage pool (a disk image of the
    entry's root tree, made as 'vml image build' makes it, its kernel and its initrd), and
    each domain boots its own copy-on-write disk on them. A host is any libvirt URI,
    usually qemu+ssh://HOST/system (your ssh keys and config log in). 'vml deploy list'
    shows what this repository deployed, 'vml release' removes it.
    """


@deploy.command("new")
@click.argument("entry")
@click.option("--host", "hosts", multiple=True, required=True, metavar="URI",
              help="A libvirt host (qemu+ssh://HOST/system); give it more than once to spread the domains over several.")
@click.option("--count", default=1, show_default=True, type=int, help="How many domains, spread over the hosts in turn.")
@click.option("--name", metavar="NAME", help="The domains' name (NAME with --count 1, else NAME-1, NAME-2...; default vml-ENTRY-N).")
@click.option("--pool", metavar="NAME", help="The host's storage pool for the disks (default: 'vml', else 'default').")
@click.option("--pool-dir", metavar="DIR", help="Where to make pool 'vml' (a directory on the host) if the host has none.")
@click.option("--network", metavar="NAME", help="Attach the domains to this libvirt network of the host (default: user-mode networking).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
              help="KVM, software emulation, or KVM where the host offers it.")
@click.option("--memory", "memory_mib", type=int, metavar="MIB", help="Memory of each domain (default: the entry's).")
@click.option("--vcpus", type=int, help="vCPUs of each domain (default: the entry's).")
@click.option("--identity", metavar="KEY", help="The key vml logs into a new guest with as root, to put an entry on a base there "
                                                "(default: the identity of the entry's area).")
@area_option
@json_option
@click.pass_context
def deploy_new(ctx: click.Context, entry: str, hosts: tuple[str, ...], count: int, name: str | None, pool: str | None,
               pool_dir: str | None, network: str | None, accel: str, memory_mib: int | None, vcpus: int | None, identity: str | None,
               area: str | None, as_json: bool) -> None:
    """Make and start COUNT domains of ENTRY on the hosts, carrying what a host lacks.

    An entry on a base image: a host lacking the base gets it (image, kernel, initrd), and
    then the entry's files, written into a guest of the base booted once on that host (over
    ssh through the host, as 'checkout --new-vm' does), kept as the entry's own volume.
    An entry without a base must hold a full root tree (a machine captured with --include /):
    its disk image is built here, as 'vml image build' makes it (as root: owners are kept).

    Each domain boots its own copy-on-write disk on the entry's volume. With user-mode
    networking (the default) the guest's sshd is forwarded to a port on the host's loopback:
    'vml deploy list' shows it (ssh -J HOST -p PORT root@127.0.0.1).
    """
    def run() -> api.DeployResult:
        with render.progress("deploying", enabled=not as_json, unit="files") as progress:
            return api.deploy(_repo(ctx), entry, list(hosts), count=count, name=name, pool=pool, pool_dir=pool_dir, network=network,
                              accel=accel, memory_mib=memory_mib, vcpus=vcpus, identity=identity, area=area, progress=progress,
                              notice=render.notice)

    result = fetching_missing_base(ctx, as_json, run)
    _emit(result, as_json, render.deploy_result)


@deploy.command("list")
@click.option("--host", metavar="URI", help="Only the domains on this host.")
@json_option
@click.pass_context
def deploy_list(ctx: click.Context, host: str | None, as_json: bool) -> None:
    """The domains this repository deployed: deployment, host, domain, state, entry."""
    _emit_each(api.deploy_list(_repo(ctx), host), as_json, render.deployed_vm)


@main_group.command()
@click.argument("targets", nargs=-1, metavar="[DEPLOYMENT|DOMAIN]...")
@click.option("--purge", is_flag=True, help="Also delete the entry's image, kernel and initrd on hosts where no deployed domain uses them.")
@json_option
@click.pass_context
def release(ctx: click.Context, targets: tuple[str, ...], purge: bool, as_json: bool) -> None:
    """Stop and remove deployed domains and their disks: those of the deployments (numbers,
    as 'vml deploy list' shows) or domains named, else all this repository deployed."""
    _emit(api.release(_repo(ctx), list(targets), purge=purge), as_json, render.release_result)
