"""vml deploy, deploy list and release: domains of an entry on other libvirt hosts
(qemu+ssh://host/system), what a host lacks of the entry carried there, and the record of
what this repository deployed where (.vml/vml/deployments.json).

A host keeps the entry in a storage pool, once for any number of domains and deploys: for an
entry on a base, the base's image, kernel and initrd (named by the base's digest) and the
entry's own overlay on that image, which a guest of the base booted once on the host took the
entry's files into (as checkout --new-vm does); for an entry without a base, a disk image of
its whole root tree (vml image build's) with its kernel and initrd. Each domain boots its own
qcow2 overlay on the entry's volume, which release deletes with the domain.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vml import durable
from vml.api._common import Progress, entry_info, resolve_entry
from vml.api.bases import check_base
from vml.areas.protocol import Notice
from vml.entry import DOMAIN_FILE, EntryInfo, base_entry
from vml.errors import AreaError, UsageError, VmlError
from vml.refs.bases import BaseName
from vml.repo import Repository

if TYPE_CHECKING:
    from vml.areas.libvirt.pools import Pool

Record = dict[str, Any]  # deployments.json: {"next": N, "deployments": {ID: {"entry", "created", "domains": [...]}}}

DEPLOYMENTS_FILE = "deployments.json"
ACCELERATIONS = ("auto", "kvm", "tcg")
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,59}$")


@dataclass(frozen=True, slots=True)
class DeployedVm:
    deployment: str
    host: str
    domain: str
    entry: str
    state: str  # libvirt's (running, shut off...), "gone" (not on the host any more), "unreachable: why"
    ssh_port: int | None = None  # the host's loopback port forwarded to the guest's sshd (user-mode networking)


@dataclass(frozen=True, slots=True)
class DeployResult:
    deployment: str
    entry: str
    vms: list[DeployedVm]
    carried: list[str]  # what went to which host: "URI: vml-….qcow2 (812.0 MB)"
    seconds: float


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: list[DeployedVm]
    deleted: list[str] = field(default_factory=list)  # the volumes deleted on the hosts


@dataclass(frozen=True, slots=True)
class Carrying:
    """Progress of an upload, as render.progress reads it."""

    files: int
    bytes: int


def _pools() -> ModuleType:
    from vml.areas.libvirt import pools  # libvirt-python loads only for the commands that use it

    return pools


# -- the record: which domains this repository deployed, on which hosts


def _record_path(repo: Repository) -> str:
    return os.path.join(repo.vml_dir, DEPLOYMENTS_FILE)


def _read_record(repo: Repository) -> Record:
    try:
        with open(_record_path(repo), "rb") as handle:
            record = json.loads(handle.read())
    except FileNotFoundError:
        return {"next": 1, "deployments": {}}
    except (OSError, ValueError) as error:
        raise AreaError(f"{_record_path(repo)} is damaged ({error}): vml deploy list and release read it") from None
    if not isinstance(record, dict) or not isinstance(record.get("deployments"), dict):
        raise AreaError(f"{_record_path(repo)} is damaged (not vml's record of deployments)")
    return record


def _write_record(repo: Repository, record: Record) -> None:
    durable.write_atomically(_record_path(repo), json.dumps(record, indent=1, sort_keys=True).encode())


def _recorded(record: Record) -> Iterator[tuple[str, Record, Record]]:
    for deployment, facts in sorted(record["deployments"].items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0):
        for vm in facts.get("domains", []):
            yield deployment, facts, vm


# -- deploy


@dataclass(frozen=True, slots=True)
class _Disks:
    """What the domains of an entry on one host boot: the volume each overlays, the boot files."""

    image: Any  # pools.Volume
    image_format: str
    kernel: Any | None
    initrd: Any | None
    cmdline: str | None


def deploy(repo: Repository, spec: str, hosts: list[str], *, count: int = 1, name: str | None = None, pool: str | None = None,
           pool_dir: str | None = None, network: str | None = None, accel: str = "auto", memory_mib: int | None = None,
           vcpus: int | None = None, identity: str | None = None, area: str | None = None, progress: Progress = None,
           notice: Notice = None) -> DeployResult:
    """Make and start `count` domains of entry `spec`, spread over `hosts` (libvirt URIs) in
    turn, carrying to each host what it lacks of the entry: its base image and its files (an
    entry on a base), or a disk image of its whole root tree (an entry without one)."""
    started = time.monotonic()
    hosts = list(dict.fromkeys(hosts))
    _check_options(hosts, count, accel, name, memory_mib, vcpus)
    entry_id = resolve_entry(repo, spec, area)
    info = entry_info(repo, entry_id)
    check_base(repo, info, None)  # first: the command line offers to fetch a missing one
    base = BaseName(info.base.name, info.base.version) if info.base else None
    base_info = base_entry(repo.git, base)[1] if base is not None else None
    if base is not None and base_info is not None and base_info.image is None:
        raise UsageError(f"entry {entry_id[:12]} sits on base {base}, a file tree, not a disk image: a domain needs a base added with --image")
    pools, libvirt = _pools(), _libvirt()
    saved = repo.git.read_file(entry_id, DOMAIN_FILE)
    sizing = libvirt.Sizing.of(saved) if saved else libvirt.Sizing(None, None)
    sizing = libvirt.Sizing(memory_mib * 1024 if memory_mib else sizing.memory_kib, vcpus or sizing.vcpus)
    targets = {uri: pools.Pool(uri, pool, pool_dir) for uri in hosts}
    kinds = {uri: {"kvm": "kvm", "tcg": "qemu"}.get(accel) or ("kvm" if pools.offers_kvm(uri) else "qemu") for uri in hosts}
    carried: list[str] = []
    if base is None or base_info is None:
        disks = _carry_image(repo, entry_id, targets, carried, progress=progress, notice=notice)
    else:
        disks = _carry_layered(repo, entry_id, info, base, base_info, targets, kinds, carried, identity=identity, progress=progress,
                               notice=notice)
    with repo.deployments_lock():
        record = _read_record(repo)
        deployment = str(record.get("next", 1))
        record["next"] = int(deployment) + 1
        record["deployments"][deployment] = {"entry": entry_id, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                             "domains": []}
        _write_record(repo, record)
    vms = []
    for number in range(count):
        uri = hosts[number % len(hosts)]
        target = targets[uri]
        domain_name = _free_name(target, name, entry_id, count)
        vm = {"host": uri, "name": domain_name, "pool": target.name}
        _update_record(repo, deployment, vm)  # before the domain exists: release finds what a crash left
        if notice is not None:
            notice(f"starting domain {domain_name} on {uri}")
        try:
            disk = target.overlay(f"{domain_name}.qcow2", disks[uri].image, disks[uri].image_format)
            port = _define_and_start(target, domain_name, disk, disks[uri], kind=kinds[uri], network=network, sizing=sizing,
                                     deployed=(entry_id, deployment))
        except BaseException:
            _update_record(repo, deployment, vm, remove=True)  # nothing of it is left on the host
            raise
        if port is not None:
            _update_record(repo, deployment, {**vm, "ssh_port": port})
        vms.append(DeployedVm(deployment, uri, domain_name, entry_id, libvirt.Domain(uri, domain_name).state(), port))
    return DeployResult(deployment, entry_id, vms, carried, round(time.monotonic() - started, 1))


def _check_options(hosts: list[str], count: int, accel: str, name: str | None, memory_mib: int | None, vcpus: int | None) -> None:
    if not hosts:
        raise UsageError("name at least one host: --host URI (qemu+ssh://HOST/system)")
    if count < 1:
        raise UsageError(f"--count must be 1 or more, not {count}")
    if accel not in ACCELERATIONS:
        raise UsageError(f"--accel is one of {', '.join(ACCELERATIONS)}, not {accel!r}")
    if name is not None and not _DOMAIN_NAME.match(name):
        raise UsageError(f"--name {name!r} is not a domain name vml gives: letters, digits, '_.+-', at most 60")
    for value, option in ((memory_mib, "--memory"), (vcpus, "--vcpus")):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be 1 or more, not {value}")


def _update_record(repo: Repository, deployment: str, vm: Record, *, remove: bool = False) -> None:
    """Add domain `vm` to the deployment's record, or replace the one of its host and name
    (with `remove`: take it out, and the deployment with its last domain)."""
    with repo.deployments_lock():
        record = _read_record(repo)
        domains = record["deployments"][deployment]["domains"]
        domains[:] = [d for d in domains if (d["host"], d["name"]) != (vm["host"], vm["name"])] + ([] if remove else [vm])
        if not domains:
            del record["deployments"][deployment]
        _write_record(repo, record)


def _entry_stem(entry_id: str) -> str:
    """What the volumes carried for an entry are named after, on every host."""
    return f"vml-{entry_id[:16]}"


def _libvirt() -> ModuleType:
    from vml.areas.kinds import libvirt_module

    return libvirt_module()


def _carry_image(repo: Repository, entry_id: str, targets: dict[str, Pool], carried: list[str], *, progress: Progress,
                 notice: Notice) -> dict[str, _Disks]:
    """An entry without a base: build a disk image of its root tree (vml image build's) if a
    host lacks it, and upload it, its kernel and its initrd there (the image last: a host
    with the image whole has all three)."""
    from vml.api.image import DEFAULT_CMDLINE, image_build

    stem = _entry_stem(entry_id)
    lacking = [uri for uri, target in targets.items() if _boot_set(target, stem, ".qcow2", "qcow2", None) is None]
    if lacking:
        if notice is not None:
            notice(f"building the disk image of entry {entry_id[:12]} for {', '.join(lacking)}")
        work = tempfile.mkdtemp(prefix="deploy-", dir=repo.temp_dir())
        try:
            built = image_build(repo, entry_id, os.path.join(work, "entry.qcow2"), progress=progress)
            for uri in lacking:
                _upload_set(targets[uri], stem, built.path, ".qcow2", built.kernel, built.initrd, carried, progress=progress, notice=notice)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    disks = {}
    for uri, target in targets.items():
        found = _boot_set(target, stem, ".qcow2", "qcow2", DEFAULT_CMDLINE)
        if found is None:
            raise AreaError(f"the entry's image went from pool {target.name} of {uri} while deploying: deploy again")
        disks[uri] = found
    return disks


def _boot_set(target: Pool, stem: str, suffix: str, image_format: str, cmdline: str | None) -> _Disks | None:
    """The image STEM+suffix, kernel STEM.vmlinuz and initrd STEM.initrd.img a host has, if
    the image is whole (uploaded last, its head last of all)."""
    image = target.volume(stem + suffix)
    if image is None:
        return None
    return _Disks(image, image_format, target.volume(stem + ".vmlinuz"), target.volume(stem + ".initrd.img"), cmdline)


def _upload_set(target: Pool, stem: str, image: str, suffix: str, kernel: str | None, initrd: str | None, carried: list[str], *,
                progress: Progress, notice: Notice) -> None:
    target.delete(stem + suffix)  # first: an image whole on the host vouches for the files before it
    files = [(path, stem + ending) for path, ending in ((kernel, ".vmlinuz"), (initrd, ".initrd.img"), (image, suffix)) if path]
    for number, (path, volume) in enumerate(files):
        if notice is not None:
            notice(f"carrying {volume} ({_size(os.path.getsize(path))}) to {target.uri}")
        sent = (lambda done, number=number: progress(Carrying(number, done))) if progress is not None else None
        made = target.upload(volume, path, sent)
        carried.append(f"{target.uri}: {made.name} ({_size(made.bytes)})")


def _carry_layered(repo: Repository, entry_id: str, info: EntryInfo, base: BaseName, base_info: EntryInfo, targets: dict[str, Pool],
                   kinds: dict[str, str], carried: list[str], *, identity: str | None, progress: Progress, notice: Notice) -> dict[str, _Disks]:
    """An entry on a base image: the base image (and its kernel and initrd) carried to each
    host that lacks it, then the entry's own volume there, an overlay on the base that a
    guest booted once on the host took the entry's files into (as checkout --new-vm does)."""
    from vml.areas.kinds import provisioning

    cmdline = (base_info.boot or {}).get("cmdline") or None
    stem = f"vml-base-{info.required_base().digest.rpartition(':')[2][:16]}"
    local: tuple[str, dict[str, str], str] | None = None
    disks = {}
    for uri, target in targets.items():
        found = _boot_set(target, stem, ".qcow2", "qcow2", cmdline) or _boot_set(target, stem, ".img", "raw", cmdline)
        if found is None:
            if local is None:
                image, boot = provisioning().base_image(repo, base)
                local = (image, boot, _libvirt().image_format(image))
            suffix = ".qcow2" if local[2] == "qcow2" else ".img"
            _upload_set(target, stem, local[0], suffix, local[1].get("kernel"), local[1].get("initrd"), carried,
                        progress=progress, notice=notice)
            found = _boot_set(target, stem, suffix, local[2], cmdline)
            assert found is not None
        disks[uri] = _entry_on(repo, entry_id, info, target, found, kind=kinds[uri], identity=identity, carried=carried,
                               progress=progress, notice=notice)
    return disks


def _entry_on(repo: Repository, entry_id: str, info: EntryInfo, target: Pool, base: _Disks, *, kind: str, identity: str | None,
              carried: list[str], progress: Progress, notice: Notice) -> _Disks:
    """The entry's volume on a host (made there if missing): an overlay on the base image
    holding the entry's files, marked ready (a small volume) once its guest is powered off."""
    stem = _entry_stem(entry_id)
    ready, image = target.volume(stem + ".ready"), target.volume(stem + ".qcow2")
    if ready is not None and image is not None:
        return _Disks(image, "qcow2", base.kernel, base.initrd, base.cmdline)
    libvirt = _libvirt()
    name = f"vml-prepare-{entry_id[:8]}"
    leftover = libvirt.Domain(target.uri, name)
    if leftover.exists():  # a preparation cut short
        leftover.delete()
    target.delete(stem + ".ready")
    target.delete(stem + ".qcow2")
    if notice is not None:
        notice(f"putting entry {entry_id[:12]}'s files on {target.uri}: booting its base once there")
    disk = target.overlay(stem + ".qcow2", base.image, base.image_format)
    domain = libvirt.Domain(target.uri, name)
    try:
        port = _define_and_start(target, name, disk, base, kind=kind, network=None, sizing=libvirt.Sizing(None, None), deployed=None)
        assert port is not None
        with libvirt.loopback_of(target.uri, port) as (address, local_port):
            _write_entry_in_guest(repo, entry_id, info, target.uri, name, address, local_port, identity=identity,
                                  progress=progress, notice=notice)
        _power_off_cleanly(domain)
        domain.delete()
    except BaseException:
        if domain.exists():
            domain.delete()
        target.delete(disk.name)
        raise
    target.upload_bytes(stem + ".ready", f"vml entry {entry_id}: its files are in {stem}.qcow2\n".encode())
    carried.append(f"{target.uri}: {stem}.qcow2 (the entry's files, written in a guest there)")
    made = target.volume(stem + ".qcow2")
    return _Disks(made, "qcow2", base.kernel, base.initrd, base.cmdline)


def _write_entry_in_guest(repo: Repository, entry_id: str, info: EntryInfo, uri: str, domain: str, address: str, port: int, *,
                          identity: str | None, progress: Progress, notice: Notice) -> None:
    """Wait for the guest of `domain` to answer on SSH at address:port, make its files the
    entry's, and flush them to its disk."""
    from vml.api.checkout import write_entry
    from vml.areas.kinds import LIBVIRT, as_vm, open_area
    from vml.areas.protocol import AreaConfig
    from vml.areas.rules import Rules, guest_rules, without_ephemeral

    if identity is None:
        with contextlib.suppress(VmlError):
            identity = repo.area(info.area).settings.get("identity")
    work = tempfile.mkdtemp(prefix="deploy-", dir=repo.temp_dir())
    try:
        settings = {"uri": uri, "domain": domain, "host": address, "port": str(port), "user": "root", "root": "/",
                    "knownhosts": os.path.join(work, "known_hosts"), **({"identity": identity} if identity else {})}
        rules = without_ephemeral(Rules(tuple(info.rules[0]), tuple(info.rules[1])) if info.rules else guest_rules())
        working_area = open_area(AreaConfig(domain, LIBVIRT, f"{uri}#{domain}", settings), rules, accept_new_host_key=True)
        working_area.notice = notice
        try:
            as_vm(working_area).wait_for_guest()
            write_entry(repo, working_area, entry_id, progress)
            as_vm(working_area).flush_disk()
            as_vm(working_area).power_off_inside()
        finally:
            working_area.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _power_off_cleanly(domain: Any) -> None:
    """Wait for the guest told to power off to do so, press ACPI's power button after half a
    minute, and power the domain off after another: its files are synced already."""
    for force in (False, True):
        deadline = time.monotonic() + 30
        while domain.state() not in ("shut off", "crashed") and time.monotonic() < deadline:
            time.sleep(0.5)
        if domain.state() == "shut off":
            return
        with contextlib.suppress(VmlError):
            domain.stop(force=force)


def _size(count: int) -> str:
    from vml.render import size

    return size(count)


def _free_name(target: Pool, name: str | None, entry_id: str, count: int) -> str:
    """The first domain name of the deploy's pattern the host has no domain or disk of."""
    taken = set(_pools().domain_names(target.uri)) | set(target.names())
    if name is not None and count == 1 and name not in taken and f"{name}.qcow2" not in taken:
        return name
    prefix = name or f"vml-{entry_id[:8]}"
    number = 1
    while f"{prefix}-{number}" in taken or f"{prefix}-{number}.qcow2" in taken:
        number += 1
    return f"{prefix}-{number}"


def _define_and_start(target: Pool, name: str, disk: Any, disks: _Disks, *, kind: str, network: str | None, sizing: Any,
                      deployed: tuple[str, str] | None) -> int | None:
    """Define and start domain `name` on `disk`; returns the loopback port of the host that
    its guest's sshd is forwarded to (none with a libvirt network), chosen anew if QEMU finds
    it taken. Nothing of the domain is left on the host if it cannot start (its disk is)."""
    libvirt = _libvirt()
    domain = libvirt.Domain(target.uri, name)
    for _attempt in range(5):
        port = None if network else random.randint(20000, 60999)
        xml = libvirt.deployed_domain_xml(name, disk.path, kind=kind, kernel=disks.kernel.path if disks.kernel else None,
                                          initrd=disks.initrd.path if disks.initrd else None, cmdline=disks.cmdline,
                                          network=network, ssh_port=port, sizing=sizing, entry=deployed[0] if deployed else "",
                                          deployment=deployed[1] if deployed else "")
        try:
            domain.define(xml)
            domain.start()
            return port
        except AreaError as error:
            if domain.exists():
                domain.delete()
            if port is None or "hostfwd" not in str(error) and "forwarding" not in str(error):
                target.delete(disk.name)
                raise
    target.delete(disk.name)
    raise AreaError(f"cannot start domain {name} on {target.uri}: five loopback ports in a row were taken there")


# -- list and release


def deploy_list(repo: Repository, host: str | None = None) -> list[DeployedVm]:
    """The domains this repository deployed (on `host` only, if given), as their hosts say now."""
    record = _read_record(repo)
    states: list[DeployedVm] = []
    for deployment, facts, vm in _recorded(record):
        if host is not None and vm["host"] != host:
            continue
        states.append(DeployedVm(deployment, vm["host"], vm["name"], facts.get("entry", ""), _state(vm["host"], vm["name"], deployment),
                                 vm.get("ssh_port")))
    return states


def _state(uri: str, name: str, deployment: str) -> str:
    libvirt = _libvirt()
    try:
        domain = libvirt.Domain(uri, name)
        if not domain.exists():
            return "gone"
        if _deployment_of(domain) != deployment:
            return "gone (another domain has its name)"
        return str(domain.state())
    except VmlError as error:
        return f"unreachable: {error}"


def _deployment_of(domain: Any) -> str | None:
    found = _libvirt().deployment_of(domain.definition())
    return str(found[1]) if found else None


def release(repo: Repository, targets: list[str] | None = None, *, purge: bool = False) -> ReleaseResult:
    """Stop and remove deployed domains and their disks: those of the deployments or domain
    names in `targets`, else all this repository deployed. With `purge`, also the entry's
    image, kernel and initrd on each host where no deployed domain uses them any more."""
    with repo.deployments_lock():
        record = _read_record(repo)
        chosen = [(deployment, facts, vm) for deployment, facts, vm in _recorded(record)
                  if not targets or deployment in targets or vm["name"] in targets]
        unknown = [target for target in targets or [] if not any(target in (d, vm["name"]) for d, _f, vm in chosen)]
        if unknown:
            raise UsageError(f"no deployment or deployed domain {', '.join(map(repr, unknown))} (vml deploy list shows them)")
        released, deleted, failures = [], [], []
        for deployment, facts, vm in chosen:
            try:
                deleted += _release_one(vm["host"], vm["name"], deployment, vm.get("pool"))
            except VmlError as error:
                failures.append(f"{vm['name']} on {vm['host']}: {error}")
                continue
            facts["domains"].remove(vm)
            released.append(DeployedVm(deployment, vm["host"], vm["name"], facts.get("entry", ""), "released"))
        for deployment in [d for d, facts in record["deployments"].items() if not facts.get("domains")]:
            del record["deployments"][deployment]
        _write_record(repo, record)
    if purge:
        for uri, pool in dict.fromkeys((vm["host"], vm.get("pool")) for _d, _f, vm in chosen):
            entries = {vm.entry for vm in released if vm.host == uri}
            deleted += _purge(uri, pool, entries)
    if failures:
        raise AreaError(f"released {len(released)}, but not {'; '.join(failures)}")
    return ReleaseResult(released, deleted)


def _release_one(uri: str, name: str, deployment: str, pool: str | None) -> list[str]:
    """Power off and undefine one deployed domain, and delete its overlay (also when the
    domain was removed on the host); a domain of that name that vml did not deploy then is
    left alone, and its disks (its record goes)."""
    domain = _libvirt().Domain(uri, name)
    overlay = f"{name}.qcow2"
    if not domain.exists():
        return [f"{uri}: {overlay}"] if pool and _pools().Pool(uri, pool).delete(overlay) else []
    if _deployment_of(domain) != deployment:
        return []
    return [f"{uri}: {overlay}" for disk in domain.delete() if os.path.basename(disk) == overlay and _pools().delete_volume_at(uri, disk)]


def _purge(uri: str, pool: str | None, entries: set[str]) -> list[str]:
    """Delete what was carried to `pool` of host `uri` for `entries` that no domain vml
    deployed there boots any more; and the base images, once nothing else of vml is left."""
    if not pool or not entries:
        return []
    pools = _pools()
    target = pools.Pool(uri, pool)
    deleted = []
    for entry_id in entries - pools.deployed_entries(uri):
        for volume in (_entry_stem(entry_id) + suffix for suffix in (".qcow2", ".ready", ".vmlinuz", ".initrd.img")):
            if target.delete(volume):
                deleted.append(f"{uri}: {volume}")
    names = target.names()
    if not [name for name in names if name.startswith("vml-") and not name.startswith("vml-base-")]:
        for name in names:
            if name.startswith("vml-base-") and target.delete(name):
                deleted.append(f"{uri}: {name}")
    return deleted
