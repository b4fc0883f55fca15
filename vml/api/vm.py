"""vml vm start / stop / suspend / resume / delete / info, and the first half of checkout
--new-vm (a domain defined anew from an entry's base): a libvirt area's machine."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass

from vml.api._common import entry_info, opened_area, resolve_entry
from vml.api.bases import check_base
from vml.api.shares import mount_shares
from vml.areas.kinds import as_vm, is_vm, open_domain, provisioning, undefined_vm_info
from vml.areas.libvirt.definition import carried_shares
from vml.areas.protocol import Notice, VmArea
from vml.config import SHARES_SETTING, AreaConfig, shared_paths
from vml.entry import DOMAIN_FILE
from vml.errors import UsageError
from vml.refs.bases import BaseName
from vml.refs.heads import check_branch_free
from vml.refs.namespace import BRANCH_PREFIX
from vml.repo import Repository

VM_ACTIONS = ("start", "stop", "suspend", "resume", "delete")


@dataclass(frozen=True, slots=True)
class VmState:
    area: str
    vm: object  # libvirt.VmInfo; None once deleted
    deleted: list[str] = dataclasses.field(default_factory=list)  # with delete: the domain and the files removed
    ssh: str | None = None  # where vml reaches the guest: user@host:port
    notes: list[str] = dataclasses.field(default_factory=list)  # start --wait: the shared folders it mounted


def _libvirt_config(repo: Repository, area: str | None) -> AreaConfig:
    config = repo.choose_area(area)
    if not is_vm(config):
        raise UsageError(f"area {config.name} is a {config.kind} area; vml vm works on libvirt areas (vml area add NAME --libvirt URI ...)")
    return config


def vm_action(repo: Repository, action: str, *, area: str | None = None, force: bool = False, wait: bool = False,
              notice: Notice = None) -> VmState:
    """Start (with `wait`: until the guest answers on SSH), stop (shut down; with force:
    power off), suspend, resume or delete (power off, undefine, and remove the disk overlay
    vml made for it) an area's domain."""
    if action not in VM_ACTIONS:
        raise UsageError(f"unknown vm action {action!r}: one of {', '.join(VM_ACTIONS)}")
    config = _libvirt_config(repo, area)
    with opened_area(repo, config, notice) as opened:
        working_area = as_vm(opened)
        domain = working_area.domain
        if action == "delete":
            if config.settings.get("owned") != "true" and not force:
                raise UsageError(f"domain {domain.name} was not made by vml (area {config.name} took it with --domain); "
                                 f"'vml vm delete --force' undefines it anyway (its disks stay)")
            return VmState(config.name, None, provisioning().delete_vm(repo, config, domain))
        if wait and working_area.files is None:
            raise UsageError(f"area {config.name} has no SSH settings: there is no sshd to wait for")
        if action == "start":
            with repo.area_lock(config.name):
                moved = working_area.free_forwarded_port()
                if moved is not None:
                    config = repo.set_area_setting(config.name, "port", str(moved))
        if action == "stop":
            domain.stop(force=force)
        elif not (action == "start" and wait and domain.state() == "running"):  # --wait on a running one just waits
            getattr(domain, action)()
        notes = []
        if wait:
            working_area.wait_for_guest()
            if action == "start" and shared_paths(config):
                notes = [f"{done.share.host} {done.action} at {done.share.guest}" + (f": {'; '.join(done.notes)}" if done.notes else "")
                         for done in mount_shares(config, working_area)]
        return dataclasses.replace(_vm_state(config, working_area), notes=notes)


def _vm_state(config: AreaConfig, working_area: VmArea) -> VmState:
    settings, domain = config.settings, working_area.domain
    ssh = None
    if settings.get("host"):
        port = working_area.forwarded_port() or settings.get("port")  # the definition's, whatever the settings say
        ssh = f"{settings.get('user', '')}@{settings['host']}" + (f":{port}" if port else "")
    return VmState(config.name, domain.info() if domain.exists() else undefined_vm_info(domain), ssh=ssh)


def vm_info(repo: Repository, area: str | None = None) -> list[VmState]:
    """The domain of one area, or of every libvirt area."""
    configs = [_libvirt_config(repo, area)] if area is not None else [c for c in repo.areas() if is_vm(c)]
    states = []
    for config in configs:
        with opened_area(repo, config) as working_area:
            states.append(_vm_state(config, as_vm(working_area)))
    return states


@dataclass(frozen=True, slots=True)
class MadeVm:
    config: AreaConfig  # the area's settings after: the new port, the base, owned
    domain: str
    base: BaseName
    notes: list[str] = dataclasses.field(default_factory=list)  # the entry's shared folders this host lacks


def make_vm(repo: Repository, config: AreaConfig, spec: str, branch: str | None) -> MadeVm:
    """checkout --new-vm's first half: define the area's domain anew from entry `spec`, on a
    fresh overlay of the entry's base image with the entry's memory size and vCPU count,
    and start it."""
    if not is_vm(config):
        raise UsageError(f"--new-vm makes a libvirt domain: area {config.name} is a {config.kind} area "
                         f"(vml area add NAME --libvirt URI [--identity KEY])")
    with repo.shared_lock(), repo.area_lock(config.name):
        entry_id = resolve_entry(repo, BRANCH_PREFIX + branch if branch else spec, config.name)
        info = entry_info(repo, entry_id)
        if info.base is None:
            raise UsageError(f"entry {entry_id[:12]} sits on no base image: --new-vm builds a VM from the entry's base "
                             f"(an area made with --base records it)")
        check_base(repo, info, None)
        if "host" not in config.settings:
            raise UsageError(f"area {config.name} has no way to reach its guest's files (a QEMU domain vml makes is reached "
                             f"through a forwarded port; others need --ssh): 'vml area remove {config.name}' and add it again")
        if branch is not None:
            check_branch_free(repo.git, config.name, branch)
        domain = open_domain(config)
        if domain.exists():
            raise UsageError(f"domain {domain.name} exists at {domain.uri}: --new-vm makes a new one; delete the old one and its "
                             f"disk first with 'vml vm delete -a {config.name}' (entries stay)")
        base = BaseName(info.base.name, info.base.version)
        settings = dict(config.settings)
        saved = repo.git.read_file(entry_id, DOMAIN_FILE)
        changed = provisioning().define_vm(repo, config.name, domain, base, settings, saved_definition=saved)
        # The entry's shared folders whose host directories exist here (vml/api/shares.py).
        xml, carried, missing = carried_shares(domain.definition(), saved) if saved else (b"", [], [])
        if carried:
            domain.define(xml)
        changed[SHARES_SETTING] = json.dumps(sorted(share.guest for share in carried if share.guest))
        for key, value in {**changed, "base": str(base), "owned": "true"}.items():
            config = repo.set_area_setting(config.name, key, value)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(repo.stat_cache_path(config.name))  # another guest: nothing it vouched for holds
        domain.start()
    notes = [f"the entry shares host folder {share.host} at {share.guest}, which this host lacks: left out "
             f"(vml share add DIR {share.guest} -a {config.name} gives it another)" if not os.path.isdir(share.host) else
             f"the entry shares host folder {share.host} at {share.guest}, not a place for a shared folder: left out"
             for share in missing]
    return MadeVm(config, domain.name, base, notes)
