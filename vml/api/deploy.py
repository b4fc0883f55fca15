"""vml deploy, deploy list and release: domains of an entry on other libvirt hosts
(qemu+ssh://host/system), the entry's disk carried to each host that lacks it, and the record
of what this repository deployed where (.vml/vml/deployments.json).

A host gets the entry as three volumes in a storage pool: a whole qcow2 disk image of the
entry's root tree (vml image build's), its kernel and its initrd, named by the entry's id,
so that a host has them once for any number of domains and deploys. Each domain boots
its own qcow2 overlay on that image, which release deletes with the domain.
"""

from __future__ import annotations

import json
import os
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


def deploy(repo: Repository, spec: str, hosts: list[str], *, count: int = 1, name: str | None = None, pool: str | None = None,
           pool_dir: str | None = None, network: str | None = None, accel: str = "auto", memory_mib: int | None = None,
           vcpus: int | None = None, area: str | None = None, progress: Progress = None, notice: Notice = None) -> DeployResult:
    """Make and start `count` domains of entry `spec`, spread over `hosts` (libvirt URIs) in
    turn, carrying the entry's disk image, kernel and initrd to each host that lacks them."""
    started = time.monotonic()
    hosts = list(dict.fromkeys(hosts))
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
    entry_id = resolve_entry(repo, spec, area)
    info = entry_info(repo, entry_id)
    pools = _pools()
    libvirt = _libvirt()
    saved = repo.git.read_file(entry_id, DOMAIN_FILE)
    sizing = libvirt.Sizing.of(saved) if saved else libvirt.Sizing(None, None)
    sizing = libvirt.Sizing(memory_mib * 1024 if memory_mib else sizing.memory_kib, vcpus or sizing.vcpus)
    cmdline = _cmdline(repo, info)
    targets = {uri: pools.Pool(uri, pool, pool_dir) for uri in hosts}
    stem = f"vml-{entry_id[:16]}"
    kinds = {uri: {"kvm": "kvm", "tcg": "qemu"}.get(accel) or ("kvm" if pools.offers_kvm(uri) else "qemu") for uri in hosts}
    carried = _carry(repo, entry_id, stem, targets, progress=progress, notice=notice)
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
        with repo.deployments_lock():  # recorded before it exists: release finds what a crash left
            record = _read_record(repo)
            record["deployments"][deployment]["domains"].append({"host": uri, "name": domain_name, "pool": target.name})
            _write_record(repo, record)
        if notice is not None:
            notice(f"starting domain {domain_name} on {uri}")
        _start_one(target, domain_name, stem, kind=kinds[uri], cmdline=cmdline, network=network, sizing=sizing,
                   entry_id=entry_id, deployment=deployment)
        vms.append(DeployedVm(deployment, uri, domain_name, entry_id, libvirt.Domain(uri, domain_name).state()))
    return DeployResult(deployment, entry_id, vms, carried, round(time.monotonic() - started, 1))


def _libvirt() -> ModuleType:
    from vml.areas.kinds import libvirt_module

    return libvirt_module()


def _cmdline(repo: Repository, info: EntryInfo) -> str:
    """The kernel command line: the entry's base image's, else vml image build's default."""
    from vml.api.image import DEFAULT_CMDLINE

    if info.base is not None:
        try:
            _base_id, base_info = base_entry(repo.git, BaseName(info.base.name, info.base.version))
        except UsageError:
            return DEFAULT_CMDLINE
        if base_info.boot and base_info.boot.get("cmdline"):
            return base_info.boot["cmdline"]
    return DEFAULT_CMDLINE


def _carry(repo: Repository, entry_id: str, stem: str, targets: dict[str, Pool], *, progress: Progress, notice: Notice) -> list[str]:
    """Build the entry's disk image if a host lacks it, and upload it, its kernel and its
    initrd there (the image last: a host with the image whole has all three)."""
    lacking = [uri for uri, target in targets.items()
               if target.volume(stem + ".qcow2") is None or target.volume(stem + ".vmlinuz") is None]
    if not lacking:
        return []
    from vml.api.image import image_build

    if notice is not None:
        notice(f"building the disk image of entry {entry_id[:12]} for {', '.join(lacking)}")
    work = tempfile.mkdtemp(prefix="deploy-", dir=repo.temp_dir())
    carried = []
    try:
        built = image_build(repo, entry_id, os.path.join(work, "entry.qcow2"), progress=progress)
        files = [(built.kernel, stem + ".vmlinuz"), (built.path, stem + ".qcow2")]
        if built.initrd is not None:
            files.insert(1, (built.initrd, stem + ".initrd.img"))
        for uri in lacking:
            target = targets[uri]
            target.delete(stem + ".qcow2")  # first: an image whole on the host vouches for the files before it
            for number, (path, volume) in enumerate(files):
                if notice is not None:
                    notice(f"carrying {volume} ({_size(os.path.getsize(path))}) to {uri}")
                sent = (lambda done, number=number: progress(Carrying(number, done))) if progress is not None else None
                made = target.upload(volume, path, sent)
                carried.append(f"{uri}: {made.name} ({_size(made.bytes)})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return carried


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


def _start_one(target: Pool, domain_name: str, stem: str, *, kind: str, cmdline: str, network: str | None, sizing: Any,
               entry_id: str, deployment: str) -> None:
    """Define and start one domain on its own overlay of the entry's image; nothing of it
    is left on the host if that fails."""
    libvirt = _libvirt()
    image, kernel, initrd = (target.volume(stem + suffix) for suffix in (".qcow2", ".vmlinuz", ".initrd.img"))
    if image is None or kernel is None:
        raise AreaError(f"the entry's image went from pool {target.name} of {target.uri} while deploying: deploy again")
    disk = target.overlay(f"{domain_name}.qcow2", image)
    domain = libvirt.Domain(target.uri, domain_name)
    try:
        domain.define(libvirt.deployed_domain_xml(domain_name, disk.path, kind=kind, kernel=kernel.path,
                                                  initrd=initrd.path if initrd else None, cmdline=cmdline, network=network,
                                                  sizing=sizing, entry=entry_id, deployment=deployment))
        domain.start()
    except BaseException:
        if domain.exists():
            domain.delete()
        target.delete(disk.name)
        raise


# -- list and release


def deploy_list(repo: Repository, host: str | None = None) -> list[DeployedVm]:
    """The domains this repository deployed (on `host` only, if given), as their hosts say now."""
    record = _read_record(repo)
    states: list[DeployedVm] = []
    for deployment, facts, vm in _recorded(record):
        if host is not None and vm["host"] != host:
            continue
        states.append(DeployedVm(deployment, vm["host"], vm["name"], facts.get("entry", ""), _state(vm["host"], vm["name"], deployment)))
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
                deleted += _release_one(vm["host"], vm["name"], deployment)
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


def _release_one(uri: str, name: str, deployment: str) -> list[str]:
    """Power off and undefine one deployed domain, and delete its overlay; a domain of that
    name that vml did not deploy then is left alone (its record goes)."""
    libvirt = _libvirt()
    domain = libvirt.Domain(uri, name)
    deleted = []
    if domain.exists() and _deployment_of(domain) == deployment:
        for disk in domain.delete():
            if os.path.basename(disk) == f"{name}.qcow2" and _pools().delete_volume_at(uri, disk):
                deleted.append(f"{uri}: {os.path.basename(disk)}")
    return deleted


def _purge(uri: str, pool: str | None, entries: set[str]) -> list[str]:
    """Delete the carried volumes of `entries` in `pool` of host `uri` that no domain vml
    deployed there boots any more."""
    if not pool or not entries:
        return []
    pools = _pools()
    target = pools.Pool(uri, pool)
    deleted = []
    for entry_id in entries - pools.deployed_entries(uri):
        for suffix in (".qcow2", ".vmlinuz", ".initrd.img"):
            if target.delete(f"vml-{entry_id[:16]}{suffix}"):
                deleted.append(f"{uri}: vml-{entry_id[:16]}{suffix}")
    return deleted
