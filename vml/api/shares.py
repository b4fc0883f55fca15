"""vml share add / remove / list / mount: a host directory shared with a libvirt area's
guest (seed 002: "host/guest file sharing ... easily enabled or disabled"), as a 9p
filesystem on the domain's virtio bus that vml mounts in the guest over SSH.

The share lives in the domain's definition (a <filesystem>, and the guest path in vml's
<metadata>), so an entry's vm/domain.xml records it and `checkout --new-vm` makes it again
where the host directory exists (vml/areas/libvirt/provision.py). What is under a share's
guest path is host data: the area's captures and checkouts leave it alone (the path is
excluded: `area_rules`). QEMU cannot add a 9p device to a running guest: a share added to
a running domain is mounted from its next start; one removed is unmounted at once, and
its device goes at the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from vml.api._common import opened_area
from vml.areas.kinds import as_vm, is_vm
from vml.areas.libvirt.definition import Share, shareable_guest_path, shares_in, with_share, without_share
from vml.areas.protocol import Notice, VmArea
from vml.config import SHARES_SETTING, AreaConfig
from vml.errors import UsageError
from vml.repo import Repository


@dataclass(frozen=True, slots=True)
class ShareInfo:
    area: str
    host: str
    guest: str | None  # None: a filesystem of the domain that vml did not add (not mounted by vml)
    tag: str
    read_only: bool
    host_missing: bool


@dataclass(frozen=True, slots=True)
class ShareResult:
    share: ShareInfo
    action: str  # added, removed, mounted
    notes: list[str]


def share_add(repo: Repository, host_dir: str, guest_path: str, *, area: str | None = None, read_only: bool = False,
              notice: Notice = None) -> ShareResult:
    """Share `host_dir` with the area's guest at `guest_path`; mounted now if the domain
    runs with it, else from its next start (`vml vm start --wait`, `vml share mount`)."""
    config = _libvirt_area(repo, area)
    host = os.path.realpath(host_dir)
    if not os.path.isdir(host):
        raise UsageError(f"{host_dir} is not a directory on this host")
    guest = _guest_path(guest_path)
    with _defined_domain(repo, config, notice, f"make it first ('vml checkout ENTRY --new-vm -a {config.name}')") as (working_area, current):
        domain = working_area.domain
        for share in shares_in(current):
            if share.guest is not None and (_within(guest, share.guest) or _within(share.guest, guest)):
                raise UsageError(f"{share.guest} in the guest shares {share.host} already: 'vml share remove {share.guest}' first")
        xml, share = with_share(current, host, guest, read_only)
        domain.define(xml)
        config = _record_paths(repo, config, shares_in(xml))
        notes = []
        if domain.state() == "running":
            notes.append(f"domain {domain.name} runs: the share is mounted from its next start "
                         f"(vml vm stop -a {config.name} && vml vm start --wait -a {config.name})")
        else:
            notes.append(f"mounted at {guest} when the domain starts (vml vm start --wait -a {config.name})")
    return ShareResult(_info(config, share), "added", notes)


def share_remove(repo: Repository, which: str, *, area: str | None = None, notice: Notice = None) -> ShareResult:
    """Stop sharing a host directory (named by its guest path, host path or mount tag):
    unmounted in the running guest now, its device gone from the next start."""
    config = _libvirt_area(repo, area)
    with _defined_domain(repo, config, notice, "it shares nothing") as (working_area, current):
        domain = working_area.domain
        share = _find(config, current, which)
        notes = []
        if domain.state() == "running" and working_area.files is not None:
            problem = working_area.unmount_share(share)
            if problem is not None:
                raise UsageError(f"{problem}: nothing was changed (is a process using it?)")
            notes.append(f"unmounted {share.guest} in the guest; its device goes at the domain's next start")
        xml = without_share(current, share.tag)
        domain.define(xml)
        config = _record_paths(repo, config, shares_in(xml))
    return ShareResult(_info(config, share), "removed", notes)


def share_list(repo: Repository, area: str | None = None) -> list[ShareInfo]:
    """The shares of one libvirt area's domain, or of every libvirt area's."""
    configs = [_libvirt_area(repo, area)] if area is not None else [c for c in repo.areas() if is_vm(c)]
    found = []
    for config in configs:
        with opened_area(repo, config) as opened:
            domain = as_vm(opened).domain
            if domain.exists():
                found += [_info(config, share) for share in shares_in(domain.definition())]
    return found


def share_mount(repo: Repository, *, area: str | None = None, notice: Notice = None) -> list[ShareResult]:
    """Mount the area's shares in its running guest (after a start vml did not wait for)."""
    config = _libvirt_area(repo, area)
    with opened_area(repo, config, notice) as opened:
        return mount_shares(config, as_vm(opened))


def mount_shares(config: AreaConfig, working_area: VmArea) -> list[ShareResult]:
    """Each share the running domain has (its live devices) mounted in the guest; a share
    it will have from its next start is said to be waiting."""
    domain = working_area.domain
    if domain.state() != "running":
        raise UsageError(f"domain {domain.name} is {domain.state()}: start it first (vml vm start --wait -a {config.name})")
    live = {share.tag for share in shares_in(domain.live_definition())}
    results = []
    for share in shares_in(domain.definition()):
        if share.guest is None:
            continue
        if share.tag not in live:
            results.append(ShareResult(_info(config, share), "waiting", [f"{share.host} is shared from the domain's next start"]))
            continue
        notes = working_area.mount_shares([share])
        results.append(ShareResult(_info(config, share), "not mounted" if notes else "mounted", notes))
    return results


@contextlib.contextmanager
def _defined_domain(repo: Repository, config: AreaConfig, notice: Notice, otherwise: str) -> Iterator[tuple[VmArea, bytes]]:
    """The area opened (and locked) to change its domain's definition: it and that definition."""
    with opened_area(repo, config, notice) as opened, repo.area_lock(config.name):
        working_area = as_vm(opened)
        if not working_area.domain.exists():
            raise UsageError(f"domain {working_area.domain.name} is not defined: {otherwise}")
        yield working_area, working_area.domain.definition()


def _record_paths(repo: Repository, config: AreaConfig, shares: list[Share]) -> AreaConfig:
    return repo.set_area_setting(config.name, SHARES_SETTING, json.dumps(sorted(s.guest for s in shares if s.guest)))


def _libvirt_area(repo: Repository, area: str | None) -> AreaConfig:
    config = repo.choose_area(area)
    if not is_vm(config):
        raise UsageError(f"area {config.name} is a {config.kind} area: shared folders are a libvirt domain's "
                         f"(vml area add NAME --libvirt URI ...)")
    return config


def _guest_path(path: str) -> str:
    if not path.startswith("/") or "\0" in path or "\n" in path:
        raise UsageError(f"{path!r}: give the guest path as an absolute path, e.g. /mnt/data")
    normal = posixpath.normpath(path)
    if not shareable_guest_path(normal):
        raise UsageError(f"{path}: not a place for a shared folder (not over /, /etc, /usr, /var, /root...; nothing in /proc, /sys, "
                         f"/dev or /run: the guest's system needs them)")
    return normal


def _within(path: str, other: str) -> bool:
    return path == other or path.startswith(other.rstrip("/") + "/")


def _find(config: AreaConfig, xml: bytes, which: str) -> Share:
    shares = shares_in(xml)
    wanted = posixpath.normpath(which) if which.startswith("/") else which
    for share in shares:
        if wanted in (share.guest, share.tag) or os.path.realpath(which) == share.host:
            return share
    listed = ", ".join(f"{s.guest or s.tag} ({s.host})" for s in shares) or "none"
    raise UsageError(f"area {config.name} shares nothing at {which!r} (its shares: {listed})")


def _info(config: AreaConfig, share: Share) -> ShareInfo:
    return ShareInfo(config.name, share.host, share.guest, share.tag, share.read_only, not os.path.isdir(share.host))
