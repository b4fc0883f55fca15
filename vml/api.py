"""One function per vml command. Each returns data; none prints (see render.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import vml
from vml.areas.base import AreaConfig, check_area_name
from vml.areas.capture import CaptureResult, capture_files, capture_tree
from vml.areas.fsmeta import flag_letters
from vml.areas.kinds import libvirt_module, open_area, ssh_target
from vml.areas.rules import Rules, default_rules, load_rules, save_rules
from vml.areas.restore import Restore, RestoreProgress
from vml.areas.statcache import StatCache
from vml.entry import DOMAIN_FILE, ENTRY_FILE, BaseRef, EntryInfo
from vml.environment import COMPARED as ENV_COMPARED
from vml.environment import VARIABLES, diff_environment, dotfiles
from vml.errors import AreaError, ConcurrentUpdate, CorruptObject, LocalChanges, UnknownEntry, UsageError, VmlError
from vml.exchange.bundle import DIFFERENTIAL, FULL, INCREMENTAL, SINCE, read_bundle, write_bundle
from vml.exchange.fetch import read_history, receive_blobs, remote_entry_info
from vml.exchange.push import FAST_FORWARD, REJECTED, UP_TO_DATE, plan_updates, send
from vml.exchange.remote import RemoteRepository
from vml.objects.diff import DELETED, PROPERTIES, diff_paths, diff_roots
from vml.objects.fsck import TreeChecker, check_packs
from vml.objects.gc import UPLOAD_GRACE, collect
from vml.objects.hashing import file_digest
from vml.objects.ids import ObjectId
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_NAMES
from vml.objects.walk import listing_loader, node_at, read_content, root_node, tree_counts, walk_nodes
from vml.refs import names
from vml.refs.branches import RefInfo, check_name, create_ref, delete_branch, delete_tag, list_refs
from vml.refs.git import ZERO, Commit
from vml.refs.heads import (AREA_PREFIX, BRANCH_PREFIX, AreaHead, advance, areas_on_branch, attach, branch_exists, check_branch_free,
                            detach, read_head, remove_head)
from vml.refs.names import REMOTE_PREFIX, TAG_PREFIX
from vml.refs.reflogs import EXPIRE_ALL, EXPIRE_UNREACHABLE, parse_when, protected_entry, rewrite_lost_predecessors
from vml.refs.reflogs import expire as expire_reflogs
from vml.refs.bases import BASE_PREFIX, BaseName, base_name, list_bases, parse_base
from vml.refs.rewrite import drop_entry
from vml.pathnames import lossless_text, path_bytes, quote_path
from vml.repo import Repository
from vml.transport.base import open_transport, parse_url

Progress = Callable[[object], None] | None


# -- init and areas


@dataclass(frozen=True, slots=True)
class InitResult:
    path: str
    bare: bool


def init(path: str = ".", *, bare: bool = False) -> InitResult:
    repo = Repository.init(path, bare=bare)
    return InitResult(repo.path, bare)


@dataclass(frozen=True, slots=True)
class AreaInfo:
    name: str
    kind: str
    location: str
    branch: str | None
    entry: str | None


@dataclass(frozen=True, slots=True)
class AreaOptions:
    """Where an area's files are: exactly one of directory and ssh (user@host[:port])."""

    directory: str | None = None
    ssh: str | None = None
    identity: str | None = None
    root: str = "/"
    include: tuple[str, ...] = ()  # replaces the kind's default includes when given
    exclude: tuple[str, ...] = ()  # added to the kind's default excludes
    base: str | None = None  # NAME:VERSION of the base image the area's guest was made from
    accept_new_host_key: bool = False  # with ssh: log in now and remember an unknown host key
    libvirt: str | None = None  # a libvirt URI: the area is a domain there
    domain: str | None = None  # with libvirt: an existing domain, or the name for one defined from --base


def area_add(repo: Repository, name: str, options: AreaOptions | None = None, *, directory: str | None = None,
             branch: str | None = None) -> AreaInfo:
    check_area_name(name)
    options = options or AreaOptions(directory=directory)
    if any(existing.name == name for existing in repo.areas()):
        raise AreaError(f"area {name!r} exists already")
    if options.libvirt is not None:
        config = _libvirt_area(repo, name, options)
    elif (options.directory is None) == (options.ssh is None):
        raise UsageError("say where the area's files are: --dir PATH, --ssh user@host[:port] or --libvirt URI")
    elif options.directory is not None:
        location = os.path.abspath(options.directory)
        if os.path.exists(location) and not os.path.isdir(location):
            raise AreaError(f"{location} is not a directory")
        _check_apart(os.path.realpath(location), os.path.realpath(repo.path))
        config = AreaConfig(name, "dir", location)
    else:
        config = AreaConfig(name, "ssh", "", _ssh_settings(options))
        config = dataclasses.replace(config, location=str(ssh_target(config)))
    try:
        return _add_area(repo, config, options, branch)
    except BaseException:
        if any(existing.name == config.name for existing in repo.areas()):
            repo.remove_area(config.name)
        if config.kind == "libvirt" and options.base is not None:  # the domain defined for it goes too
            with contextlib.suppress(VmlError):
                _delete_vm(repo, config, libvirt_module().Domain(config.settings["uri"], config.settings["domain"]))
        raise


def _add_area(repo: Repository, config: AreaConfig, options: AreaOptions, branch: str | None) -> AreaInfo:
    name = config.name
    if options.base is not None:
        _base_entry(repo, parse_base(repo.git, options.base))  # it must exist
        config = dataclasses.replace(config, settings={**config.settings, "base": options.base})
    defaults = default_rules(config.kind)
    rules = Rules(options.include or defaults.include, defaults.exclude + tuple(options.exclude))
    if branch is None:
        branch = "main" if not areas_on_branch(repo.git, "main") else name
    if options.accept_new_host_key:
        if options.ssh is None:
            raise UsageError("--accept-new-host-key goes with --ssh")
        with contextlib.closing(open_area(config, rules, accept_new_host_key=True)) as working_area:
            (working_area.files if config.kind == "libvirt" else working_area).check_connection()
    repo.add_area(config)
    save_rules(repo.rules_path(name), rules)
    attach(repo.git, name, branch, f"area add: {name}")
    return area_info(repo, config)


def _ssh_settings(options: AreaOptions) -> dict[str, str]:
    from vml.areas.ssh import SshTarget

    identity = _identity_file(options)
    target = SshTarget.parse(options.ssh, identity=identity, root=options.root)
    settings = {"host": target.host, "root": target.root}
    settings.update({k: str(v) for k, v in (("port", target.port), ("user", target.user), ("identity", identity)) if v})
    return settings


def _identity_file(options: AreaOptions) -> str | None:
    """--identity KEY as an absolute path, which must exist."""
    identity = os.path.abspath(options.identity) if options.identity else None
    if identity and not os.path.isfile(identity):
        raise AreaError(f"identity file {options.identity} does not exist")
    return identity


def _libvirt_area(repo: Repository, name: str, options: AreaOptions) -> AreaConfig:
    """A domain that exists (--domain), a new one defined on an overlay of a base image
    (--base), or none yet: 'vml checkout ENTRY --new-vm' makes it from an entry."""
    libvirt = libvirt_module()
    if options.directory is not None:
        raise UsageError("--libvirt and --dir do not go together: a domain's files are reached with --ssh")
    domain = libvirt.Domain(options.libvirt, options.domain or f"vml-{name}")
    settings = {"uri": options.libvirt, "domain": domain.name}
    if options.ssh:
        settings.update(_ssh_settings(options))
    if options.base is None and options.domain is not None:
        domain.info()  # it must exist
        if not options.ssh:
            settings.update(_forwarded_ssh_settings(repo, name, options, domain, existing=True))
        return AreaConfig(name, "libvirt", f"{options.libvirt}#{domain.name}", settings)
    if domain.exists():
        raise AreaError(f"a domain named {domain.name!r} exists already at {options.libvirt}: give another --domain NAME")
    settings["owned"] = "true"  # vml defines it (now from --base, or later with checkout --new-vm) and may delete it
    if not options.ssh:
        settings.update(_forwarded_ssh_settings(repo, name, options, domain, existing=False))
        if options.base is None and "host" not in settings:
            raise UsageError(f"an area whose domain 'checkout --new-vm' makes later needs a way to its guest: --ssh, "
                             f"or a QEMU driver, whose domains vml reaches through a forwarded port ({options.libvirt} is not QEMU)")
    if options.base is not None:
        _define_vm(repo, name, domain, parse_base(repo.git, options.base), settings)
    return AreaConfig(name, "libvirt", f"{options.libvirt}#{domain.name}", settings)


def _forwarded_ssh_settings(repo: Repository, name: str, options: AreaOptions, domain, *, existing: bool) -> dict[str, str]:
    """How vml reaches the guest of a VM it defines: root@127.0.0.1 on a forwarded port
    (chosen when the VM is defined), with the area's own known_hosts."""
    if domain.connection.getType() != "QEMU":
        return {}
    if existing:
        port = libvirt_module().forwarded_port(domain.definition())
        if port is None:
            return {}  # someone else's domain: its files need --ssh
    identity = _identity_file(options)
    settings = {"host": "127.0.0.1", "user": "root", "root": options.root,
                "knownhosts": os.path.join(repo.area_state_dir(name), "known_hosts"),
                "console": os.path.join(repo.area_state_dir(name), "console.log")}
    if existing:
        settings["port"] = str(port)
    if identity:
        settings["identity"] = identity
    return settings


def _define_vm(repo: Repository, name: str, domain, base: BaseName, settings: dict[str, str], *,
               saved_definition: bytes | None = None) -> dict[str, str]:
    """Define the area's domain on a new overlay of `base`'s image, sized as
    `saved_definition` (an entry's) if given, with a newly forwarded SSH port when vml
    reaches the guest that way. Returns the settings that changed (the port)."""
    libvirt = libvirt_module()
    sizing = libvirt.Sizing.of(saved_definition) if saved_definition else libvirt.Sizing(None, None)
    image, boot = _base_image(repo, base)
    state_dir = repo.area_state_dir(name)
    os.makedirs(state_dir, exist_ok=True)
    overlay = os.path.join(state_dir, "disk.qcow2")
    if os.path.exists(overlay):  # left by an area of this name that was removed: never lost
        using = libvirt.domains_using(domain.connection, overlay)
        if using:
            raise AreaError(f"{overlay} is the disk of domain {', '.join(using)} (kept when area {name} was removed): "
                            f"delete that domain, or use another area name")
        os.rename(overlay, os.path.join(state_dir, f"disk-before-{time.strftime('%Y%m%dT%H%M%S')}.qcow2"))
    libvirt.make_overlay(image, overlay)
    changed = {}
    port = None
    if settings.get("knownhosts"):
        port = libvirt.free_port()
        changed["port"] = str(port)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(settings["knownhosts"])  # a new guest: its key is learnt at the first login
    xml = libvirt.new_domain_xml(domain.connection, domain.name, overlay, console=os.path.join(state_dir, "console.log"),
                                 ssh_port=port, uuid_text=libvirt.unused_uuid(domain.connection, saved_definition), **boot)
    domain.define(sizing.apply(xml))
    settings.update(changed)
    return changed


def _base_image(repo: Repository, base: BaseName) -> tuple[str, dict[str, str]]:
    """The path of a base's image file, written out of the store once and kept read-only,
    and its boot settings (kernel and initrd paths beside it, cmdline), if it has them."""
    entry, info = _base_entry(repo, base)
    if info.image is None:
        raise UsageError(f"base {base} is a file tree, not a disk image: a domain needs a base added with --image")
    names = [info.image] + [info.boot[k] for k in ("kernel", "initrd") if info.boot and info.boot.get(k)]
    for file_name in names:
        if file_name in ("", ".", "..") or "/" in file_name or "\0" in file_name:
            raise CorruptObject(f"base {base} names a file {file_name!r}, which is not a file name")
    directory = os.path.join(repo.vml_dir, "images", base.name, base.version)
    path = os.path.join(directory, info.image)
    if not os.path.exists(path):
        temp = directory + ".tmp"
        shutil.rmtree(temp, ignore_errors=True)
        Restore(repo.store, listing_loader(repo.store)).run(_root_of(repo, entry), os.fsencode(temp))
        for file_name in names:
            os.chmod(os.path.join(temp, file_name), 0o444)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        os.rename(temp, directory)
    boot = {k: os.path.join(directory, v) for k, v in (info.boot or {}).items() if k in ("kernel", "initrd") and v}
    if info.boot and info.boot.get("cmdline"):
        boot["cmdline"] = info.boot["cmdline"]
    return path, boot


@dataclass(frozen=True, slots=True)
class AreaRemoved:
    name: str
    kind: str
    entry: str | None
    kept: list[str]  # what stays on disk or in libvirt, for the user to remove if they want


def area_remove(repo: Repository, name: str, *, force: bool = False) -> AreaRemoved:
    """Forget an area: its settings, rules, stat cache and HEAD. Entries stay; the guest,
    the directory and a domain are not touched."""
    config = repo.area(name)
    with repo.area_lock(name):
        head = read_head(repo.git, name)
        if head.branch is None and head.entry is not None and not force and not any(
            repo.git.is_ancestor(head.entry, repo.git.ref_target(ref)) or repo.git.ref_target(ref) == head.entry
            for ref in repo.git.ref_names(BRANCH_PREFIX) + repo.git.ref_names(TAG_PREFIX)
        ):
            raise UsageError(f"area {name} is detached at {head.entry[:12]}, which no branch or tag holds; "
                             f"keep it with 'vml branch NAME {head.entry[:12]}' or remove anyway with --force")
        remove_head(repo.git, name, f"area remove: {name}")
        repo.remove_area(name)
        state_dir = repo.area_state_dir(name)
        for file_name in ("statcache", "rules", "known_hosts"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state_dir, file_name))
        kept = [os.path.join(state_dir, f) for f in sorted(os.listdir(state_dir))] if os.path.isdir(state_dir) else []
        if config.kind == "libvirt":
            kept.insert(0, f"domain {config.settings.get('domain')} at {config.settings.get('uri')}")
        if not kept:
            with contextlib.suppress(OSError):
                os.rmdir(state_dir)
    return AreaRemoved(name, config.kind, head.entry, kept)


def area_rules(repo: Repository, config: AreaConfig) -> Rules:
    return load_rules(repo.rules_path(config.name), config.kind)


Notice = Callable[[str], None] | None  # hears what a long wait (a guest booting) waits for


@contextlib.contextmanager
def _opened(repo: Repository, config: AreaConfig, notice: Notice = None):
    working_area = open_area(config, area_rules(repo, config))
    if hasattr(working_area, "notice"):
        working_area.notice = notice
    try:
        yield working_area
    finally:
        working_area.close()


@dataclass(frozen=True, slots=True)
class AreaShow:
    area: AreaInfo
    settings: dict[str, str]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    rules_file: str


def area_show(repo: Repository, name: str | None = None) -> AreaShow:
    config = repo.choose_area(name)
    rules = area_rules(repo, config)
    return AreaShow(area_info(repo, config), dict(config.settings), rules.include, rules.exclude, repo.rules_path(config.name))


def _check_apart(location: str, repository: str) -> None:
    """An area may not hold its repository (a checkout would delete it, a commit save it)
    nor sit inside it."""
    if location == repository or repository.startswith(location.rstrip("/") + "/"):
        raise AreaError(
            f"the area {location} would contain the repository {repository}: keep the repository "
            f"outside the area (vml --repo PATH, or VML_REPO) or make the area a subdirectory"
        )
    if location.startswith(repository + "/"):
        raise AreaError(f"the area {location} is inside the repository {repository}")


def area_info(repo: Repository, config: AreaConfig) -> AreaInfo:
    head = read_head(repo.git, config.name)
    return AreaInfo(config.name, config.kind, config.location, head.branch, head.entry)


def area_list(repo: Repository) -> list[AreaInfo]:
    return [area_info(repo, config) for config in repo.areas()]


# -- resolving what users type


def resolve_entry(repo: Repository, spec: str, area: str | None = None) -> str:
    """The entry id `spec` names (see docs/HISTORY.md); HEAD and @ mean the area's HEAD."""

    def area_head() -> AreaHead | None:
        try:
            config = repo.choose_area(area)
        except AreaError:
            if area is None and not repo.areas():
                return None  # a repository without areas: its own HEAD
            raise
        return read_head(repo.git, config.name)

    return names.resolve(repo.git, spec, area_head)


def entry_info(repo: Repository, entry: str) -> EntryInfo:
    data = repo.git.read_file(entry, ENTRY_FILE)
    if data is None:
        raise UnknownEntry(f"{entry[:12]} is a git commit but not a vml entry (no {ENTRY_FILE})")
    return EntryInfo.from_toml(data)


def _root_of(repo: Repository, entry: str) -> ObjectId:
    return ObjectId.parse(entry_info(repo, entry).manifest)


# -- commit


@dataclass(frozen=True, slots=True)
class CommitResult:
    entry: str
    created: bool  # False: nothing changed since the area's entry
    parent: str | None
    area: str
    branch: str | None
    files: int
    logical_bytes: int
    files_read: int
    bytes_read: int
    added_bytes: int
    skipped: list[str]
    changed_while_reading: list[str]


def commit(repo: Repository, message: str, *, area: str | None = None, allow_empty: bool = False, memory: bool = False,
           progress: Progress = None, notice: Notice = None) -> CommitResult:
    """Save the area as a new entry. With `memory`, a running libvirt domain's memory and
    disks are saved too (the domain is paused for the save and resumed)."""
    if not message.strip():
        raise UsageError("an entry needs a message: give -m MESSAGE")
    config = repo.choose_area(area)
    if memory and config.kind != "libvirt":
        raise UsageError(f"--memory saves a running domain's memory: area {config.name} is a {config.kind} area, not libvirt")
    with _opened(repo, config, notice) as working_area, repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        store = repo.store
        cache = StatCache.load(repo.stat_cache_path(config.name))
        added_before = store.bytes_added
        saved_memory = None
        try:
            captured = working_area.capture(store, cache, dry_run=False, progress=progress)
            extra_files = working_area.entry_files()
            if memory:
                saved_memory = working_area.save_memory(store, _temp_dir(repo))
            store.flush()  # packs, then their index: durable before any commit names them
            if VARIABLES in extra_files:
                extra_files.update(dotfiles(store, listing_loader(store), captured.root_id))
        except OSError as error:
            store.abandon()
            if error.errno != errno.ENOSPC:
                raise
            kept = store.bytes_added - added_before
            raise VmlError("the disk of the repository is full: nothing was recorded"
                           + (f"; the {kept:,} bytes this commit stored already are reused by the next one, or freed by "
                              f"'vml gc'" if kept else "")) from None
        except BaseException:
            store.abandon()
            raise
        added = store.bytes_added - added_before
        skipped = [f"{quote_path(path)} ({reason})" for path, reason in captured.skipped]
        unstable = [quote_path(path) for path in captured.changed_while_reading]
        common = dict(
            parent=head.entry,
            area=config.name,
            branch=head.branch,
            files=captured.totals.files,
            logical_bytes=captured.totals.bytes,
            files_read=captured.progress.files_read,
            bytes_read=captured.progress.bytes_read,
            added_bytes=added,
            skipped=skipped,
            changed_while_reading=unstable,
        )
        if (head.entry is not None and not allow_empty and saved_memory is None and _root_of(repo, head.entry) == captured.root_id
                and all(repo.git.read_file(head.entry, path) == data for path, data in extra_files.items())):
            captured.cache.save(repo.stat_cache_path(config.name))
            return CommitResult(entry=head.entry, created=False, **common)
        info = EntryInfo(
            manifest=captured.root_id.hex(),
            area=config.name,
            area_kind=config.kind,
            location=config.location,
            host=socket.gethostname(),
            capture_method=working_area.capture_method,
            vml_version=vml.__version__,
            nodes=captured.totals.nodes,
            files=captured.totals.files,
            logical_bytes=captured.totals.bytes,
            added_bytes=added,
            skipped=skipped,
            changed_while_reading=unstable,
            base=_area_base(repo, config),
            memory=saved_memory[0].hex() if saved_memory else None,
            memory_disks=saved_memory[1] if saved_memory else [],
            rules=(list(working_area.rules.include), list(working_area.rules.exclude)),
        )
        parents = [head.entry] if head.entry else []
        entry = repo.git.create_commit({ENTRY_FILE: info.to_toml(), **extra_files}, message, parents)
        summary = message.strip().splitlines()[0]
        try:
            advance(repo.git, head, entry, f"commit{'' if parents else ' (initial)'}: {summary}")
        except ConcurrentUpdate as error:
            raise VmlError(f"entry {entry} was saved but not recorded on its branch ({error}); "
                           f"recover it with 'vml checkout {entry[:12]}'") from None
        captured.cache.save(repo.stat_cache_path(config.name))
        return CommitResult(entry=entry, created=True, **common)


def _entry_files(repo: Repository, entry: str) -> dict[str, bytes]:
    """The files beside entry.toml that a working area compares and puts back: the domain's
    definition, the environment variables and the history."""
    found = {}
    for path in (DOMAIN_FILE, *ENV_COMPARED):
        data = repo.git.read_file(entry, path)
        if data is not None:
            found[path] = data
    return found


def _env_diff(old: dict[str, bytes], new: dict[str, bytes]) -> list[DiffEntry]:
    """Changes of the domain definition and the environment, as diff entries after the files'."""
    changes = []
    if DOMAIN_FILE in new and (DOMAIN_FILE not in old or _definitions_differ(old[DOMAIN_FILE], new[DOMAIN_FILE])):
        changes.append(DiffEntry(DOMAIN_FILE, "M" if DOMAIN_FILE in old else "A", ["definition"], None, None))
    old_env = {path: data for path, data in old.items() if path in ENV_COMPARED}
    new_env = {path: data for path, data in new.items() if path in ENV_COMPARED}
    for change in diff_environment(old_env, new_env):
        changes.append(DiffEntry(change.path, change.status, ["environment"],
                                 None if change.old is None else {"value": change.old},
                                 None if change.new is None else {"value": change.new}))
    return changes


def _definitions_differ(old: bytes, new: bytes) -> bool:
    """Domain definitions compare by what travels between hosts (memory, vCPUs), not by
    the paths and ports each host gives its own copy."""
    try:
        return libvirt_module().definitions_differ(old, new)
    except AreaError:  # no libvirt-python here: any difference counts
        return old != new


def _temp_dir(repo: Repository) -> str:
    """Beside the store, on its filesystem: memory and disk images are large."""
    path = os.path.join(repo.vml_dir, "tmp")
    os.makedirs(path, exist_ok=True)
    return path


# -- virtual machines

VM_ACTIONS = ("start", "stop", "suspend", "resume", "delete")


@dataclass(frozen=True, slots=True)
class VmState:
    area: str
    vm: object  # libvirt.VmInfo; None once deleted
    deleted: list[str] = dataclasses.field(default_factory=list)  # with delete: the domain and the files removed
    ssh: str | None = None  # where vml reaches the guest: user@host:port


def _libvirt_config(repo: Repository, area: str | None) -> AreaConfig:
    config = repo.choose_area(area)
    if config.kind != "libvirt":
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
    with _opened(repo, config, notice) as working_area:
        domain = working_area.domain
        if action == "delete":
            if config.settings.get("owned") != "true" and not force:
                raise UsageError(f"domain {domain.name} was not made by vml (area {config.name} took it with --domain); "
                                 f"'vml vm delete --force' undefines it anyway (its disks stay)")
            return VmState(config.name, None, _delete_vm(repo, config, domain))
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
        if wait:
            working_area.wait_for_guest()
        return _vm_state(config, working_area)


def _vm_state(config: AreaConfig, working_area) -> VmState:
    settings, domain = config.settings, working_area.domain
    ssh = None
    if settings.get("host"):
        port = working_area.forwarded_port() or settings.get("port")  # the definition's, whatever the settings say
        ssh = f"{settings.get('user', '')}@{settings['host']}" + (f":{port}" if port else "")
    return VmState(config.name, domain.info() if domain.exists() else libvirt_module().VmInfo.undefined(domain), ssh=ssh)


def _delete_vm(repo: Repository, config: AreaConfig, domain) -> list[str]:
    with repo.area_lock(config.name):
        state_dir = os.path.realpath(repo.area_state_dir(config.name))
        if domain.exists():
            disks = domain.delete()
            deleted = [f"domain {domain.name} at {domain.uri}"]
        else:  # a delete cut short after the undefine: finish it
            disks, deleted = [os.path.join(state_dir, "disk.qcow2")], []
        for disk in disks:  # only the overlays vml made; a domain's own disks elsewhere stay
            if os.path.dirname(os.path.realpath(disk)) == state_dir and os.path.exists(disk):
                os.unlink(disk)
                deleted.append(disk)
        if not deleted:
            raise AreaError(f"domain {domain.name} does not exist at {domain.uri}: there is nothing to delete")
        for file_name in ("statcache", "known_hosts"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state_dir, file_name))
    return deleted


def vm_info(repo: Repository, area: str | None = None) -> list[VmState]:
    """The domain of one area, or of every libvirt area."""
    configs = [_libvirt_config(repo, area)] if area is not None else [c for c in repo.areas() if c.kind == "libvirt"]
    states = []
    for config in configs:
        with _opened(repo, config) as working_area:
            states.append(_vm_state(config, working_area))
    return states


# -- base images


@dataclass(frozen=True, slots=True)
class BaseInfo:
    name: str
    version: str
    digest: str
    entry: str
    source: str  # image, dir or the kind of the area it was taken from
    location: str
    files: int
    logical_bytes: int
    added_bytes: int


def _base_entry(repo: Repository, base: BaseName) -> tuple[str, EntryInfo]:
    entry = repo.git.ref_target(base.ref)
    if entry is None:
        known = ", ".join(str(b) for b, _ in list_bases(repo.git)) or "none"
        raise UsageError(f"no base {base} in this repository (bases: {known}); add it with 'vml base add {base.name} {base.version} --image FILE'")
    return entry, entry_info(repo, entry)


def _area_base(repo: Repository, config: AreaConfig) -> BaseRef | None:
    text = config.settings.get("base")
    if not text:
        return None
    _entry, info = _base_entry(repo, parse_base(repo.git, text))
    return info.base


def _base_info(entry: str, info: EntryInfo) -> BaseInfo:
    return BaseInfo(info.base.name, info.base.version, info.base.digest, entry, info.area_kind, info.location,
                    info.files, info.logical_bytes, info.added_bytes)


@dataclass(frozen=True, slots=True)
class BootFiles:
    """What boots a disk image directly (no bootloader): kernel and initrd files, command line."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


def base_add(repo: Repository, name: str, version: str, *, image: str | None = None, directory: str | None = None,
             area: str | None = None, boot: BootFiles = BootFiles(), progress: Progress = None) -> BaseInfo:
    """Store a base image (a disk image file, a directory, or an area's current files) on its own ref."""
    if sum(source is not None for source in (image, directory, area)) != 1:
        raise UsageError("give exactly one of --image FILE, --dir DIR and --area AREA")
    if image is None and boot != BootFiles():
        raise UsageError("--kernel, --initrd and --cmdline boot an --image")
    if boot.initrd and not boot.kernel:
        raise UsageError("--initrd goes with --kernel")
    base = base_name(repo.git, name, version)
    if repo.git.ref_target(base.ref) is not None:
        raise UsageError(f"base {base} exists already (at {repo.git.ref_target(base.ref)[:12]}); bases are immutable: use a new version")
    with repo.shared_lock():
        store = repo.store
        added_before = store.bytes_added
        try:
            if image is not None:
                source, location, image_name = "image", os.path.abspath(image), os.path.basename(image)
                if not os.path.isfile(location):
                    raise UsageError(f"{image} is not a file")
                files = [(image_name, location)]
                for path in (boot.kernel, boot.initrd):
                    if path is not None:
                        if not os.path.isfile(path):
                            raise UsageError(f"{path} is not a file")
                        files.append((os.path.basename(path), os.path.abspath(path)))
                if len({file_name for file_name, _path in files}) != len(files):
                    raise UsageError("the image, kernel and initrd need different file names")
                root_id, totals = capture_files([(os.fsencode(n), os.fsencode(p)) for n, p in files], store)
                digest = file_digest(location)
            elif directory is not None:
                source, location, image_name = "dir", os.path.abspath(directory), None
                if not os.path.isdir(location):
                    raise UsageError(f"{directory} is not a directory")
                captured = capture_tree(os.fsencode(location), store, StatCache(), progress=progress)
                root_id, totals, digest = captured.root_id, captured.totals, f"tree:{captured.root_id.hex()}"
            else:
                config = repo.area(area)
                source, location, image_name = config.kind, config.location, None
                with _opened(repo, config) as working_area:
                    captured = working_area.capture(store, StatCache(), dry_run=False, progress=progress)
                root_id, totals, digest = captured.root_id, captured.totals, f"tree:{captured.root_id.hex()}"
            store.flush()
        except BaseException:
            store.abandon()
            raise
        info = EntryInfo(
            manifest=root_id.hex(), area=area or "", area_kind=source, location=location, host=socket.gethostname(),
            capture_method="base-" + source, vml_version=vml.__version__, nodes=totals.nodes, files=totals.files,
            logical_bytes=totals.bytes, added_bytes=store.bytes_added - added_before, kind="base",
            base=BaseRef(name, version, digest), image=image_name,
            boot={k: v for k, v in (("kernel", boot.kernel and os.path.basename(boot.kernel)),
                                    ("initrd", boot.initrd and os.path.basename(boot.initrd)), ("cmdline", boot.cmdline)) if v} or None,
        )
        entry = repo.git.create_commit({ENTRY_FILE: info.to_toml()}, f"base {name} {version}", [])
        repo.git.update_ref(base.ref, entry, None, f"base add: {base}")
    return _base_info(entry, info)


def base_list(repo: Repository) -> list[BaseInfo]:
    return [_base_info(entry, entry_info(repo, entry)) for _base, entry in list_bases(repo.git)]


def _check_base(repo: Repository, info: EntryInfo, config: AreaConfig | None) -> list[str]:
    """Warnings for a checkout of an entry saved on a base; an error if the repository lacks that base."""
    if info.base is None:
        return []
    entry = repo.git.ref_target(BaseName(info.base.name, info.base.version).ref)
    if entry is None:
        raise UsageError(
            f"the entry sits on base {info.base} ({info.base.digest[:19]}…), which this repository lacks: "
            f"add it with 'vml base add {info.base.name} {info.base.version} --image FILE', or fetch it from a remote that has it"
        )
    held = entry_info(repo, entry).base
    if held.digest != info.base.digest:
        raise UsageError(f"base {info.base} here has digest {held.digest[:19]}…, the entry was saved on {info.base.digest[:19]}…: not the same base")
    area_base = _area_base(repo, config) if config is not None else None
    if area_base is not None and (area_base.name, area_base.version) != (info.base.name, info.base.version):
        return [f"the entry was saved on base {info.base}, the area is on base {area_base}: files from the base may differ"]
    return []


# -- log and show


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: str
    parents: tuple[str, ...]
    message: str
    author: str
    email: str
    time: int
    offset: int
    decorations: list[str]
    area: str | None
    files: int | None
    logical_bytes: int | None
    added_bytes: int | None


def _decorations(repo: Repository) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for ref in repo.git.ref_names():
        target = repo.git.ref_target(ref)
        if target is None:
            continue
        if ref.startswith(AREA_PREFIX):
            area = ref[len(AREA_PREFIX) :]
            symbolic = repo.git.symbolic_target(ref)
            label = f"{area} -> {symbolic[len(BRANCH_PREFIX):]}" if symbolic else f"{area} (detached)"
            labels.setdefault(target, []).insert(0, label)
        elif ref.startswith(BRANCH_PREFIX):
            branch = ref[len(BRANCH_PREFIX) :]
            if not areas_on_branch(repo.git, branch):  # else "area -> branch" says it
                labels.setdefault(target, []).append(branch)
        elif ref.startswith("refs/tags/"):
            labels.setdefault(target, []).append("tag: " + ref[len("refs/tags/") :])
    return labels


def _all_starts(repo: Repository) -> list[str]:
    starts = []
    for ref in repo.git.ref_names():
        target = repo.git.ref_target(ref)
        if target is not None and target not in starts:
            starts.append(target)
    return starts


def log(
    repo: Repository,
    *,
    area: str | None = None,
    all_refs: bool = False,
    starts: list[str] | None = None,
    limit: int | None = None,
    paths: tuple[str, ...] | list[str] = (),
) -> list[LogEntry]:
    """Entries newest first, from the area's HEAD (or `starts`, or every ref). With `paths`,
    only entries in which one of them changed against every parent, with parents rewritten
    to the nearest such entries (git's history simplification)."""
    if starts is None:
        config = None
        if not all_refs:
            try:
                config = repo.choose_area(area)
            except AreaError:
                if area is not None:
                    raise
        if config is not None:
            entry = read_head(repo.git, config.name).entry
            starts = [entry] if entry else []
        else:
            starts = _all_starts(repo)
    labels = _decorations(repo)
    commits = repo.git.walk(starts)
    parents_of: dict[str, tuple[str, ...]] = {}
    if paths:
        commits, parents_of = _touching(repo, list(commits), parse_paths(paths))
    entries = []
    for commit_id in commits:
        if limit is not None and len(entries) >= limit:
            break
        entry = _log_entry(repo, repo.git.commit(commit_id), labels.get(commit_id, []))
        if commit_id in parents_of:
            entry = dataclasses.replace(entry, parents=parents_of[commit_id])
        entries.append(entry)
    return entries


def _touching(repo: Repository, commits: list[str], paths: list[bytes]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """The commits in which a path changed, and for each its nearest such ancestors."""
    load = listing_loader(repo.store, memo=4096)
    states: dict[str, tuple] = {}

    def state(commit_id: str) -> tuple:
        if commit_id not in states:
            root_id = _root_of(repo, commit_id)
            states[commit_id] = tuple(node_at(load, root_id, path) for path in paths)
        return states[commit_id]

    shown: set[str] = set()
    nearest: dict[str, tuple[str, ...]] = {}  # for every commit: its nearest shown ancestors
    parents_of: dict[str, tuple[str, ...]] = {}
    for commit_id in reversed(commits):  # parents first
        parents = [p for p in repo.git.commit(commit_id).parents if repo.git.has_object(p)]
        mine = state(commit_id)
        if parents:
            touched = all(state(p) != mine for p in parents)
        else:
            touched = any(node is not None for node in mine)
        stand_ins: list[str] = []
        for parent in parents:
            for ancestor in ((parent,) if parent in shown else nearest.get(parent, ())):
                if ancestor not in stand_ins:
                    stand_ins.append(ancestor)
        if touched:
            shown.add(commit_id)
            parents_of[commit_id] = tuple(stand_ins)
        else:
            nearest[commit_id] = tuple(stand_ins)
    return [c for c in commits if c in shown], parents_of


def _log_entry(repo: Repository, raw: Commit, decorations: list[str]) -> LogEntry:
    try:
        info = entry_info(repo, raw.id)
    except (UnknownEntry, CorruptObject):
        info = None
    return LogEntry(
        id=raw.id,
        parents=raw.parents,
        message=raw.message,
        author=raw.author,
        email=raw.email,
        time=raw.time,
        offset=raw.offset,
        decorations=decorations,
        area=info.area if info else None,
        files=info.files if info else None,
        logical_bytes=info.logical_bytes if info else None,
        added_bytes=info.added_bytes if info else None,
    )


@dataclass(frozen=True, slots=True)
class ShowResult:
    entry: LogEntry
    info: EntryInfo
    stored_bytes: int  # compressed size of every distinct blob the entry needs
    directories: int
    symlinks: int
    other: int


def show_file(repo: Repository, spec: str, *, area: str | None = None) -> bytes:
    """ENTRY:PATH, as git shows it: a file of the entry's git tree (entry.toml, env/variables,
    vm/domain.xml...) or, failing that, a regular file of its saved file tree."""
    entry_spec, _, path = spec.partition(":")
    entry_id = resolve_entry(repo, entry_spec or "HEAD", area)
    path = path.strip("/")
    if path and ".." not in path.split("/"):
        data = repo.git.read_file(entry_id, path)
        if data is not None:
            return data
    wanted = parse_paths([path])[0]
    node = node_at(listing_loader(repo.store), _root_of(repo, entry_id), wanted) if wanted else None
    if node is None:
        raise UsageError(f"{path or '(nothing)'} is not in entry {entry_id[:12]}")
    if node.kind != KIND_FILE:
        raise UsageError(f"{path} is a {KIND_NAMES[node.kind]} in entry {entry_id[:12]}, not a file")
    return read_content(repo.store, node)


def show(repo: Repository, spec: str, *, area: str | None = None) -> ShowResult:
    entry_id = resolve_entry(repo, spec, area)
    info = entry_info(repo, entry_id)
    store = repo.store
    load = listing_loader(store)
    root_id = ObjectId.parse(info.manifest)
    _files, directories, symlinks, other = tree_counts(load, root_id)
    blobs = {root_id, root_node(load, root_id).tree}
    for _path, node in walk_nodes(load, root_id, seen=set()):  # each distinct listing once
        if node.kind == KIND_DIR:
            blobs.add(node.tree)
        blobs.update(node.chunk_ids())
    stored = sum(store.stored_size(blob) for blob in blobs if blob in store)
    raw = repo.git.commit(entry_id)
    return ShowResult(_log_entry(repo, raw, _decorations(repo).get(entry_id, [])), info, stored, directories, symlinks, other)


# -- checkout


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    entry: str
    target: str
    area: str | None
    branch: str | None
    counts: RestoreProgress
    not_reproduced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _scan_area(repo: Repository, working_area, cache: StatCache | None = None, expected=None) -> tuple[CaptureResult, Callable]:
    """The area's current files, hashed but not stored: the capture and a loader for its listings."""
    if cache is None:
        cache = StatCache.load(repo.stat_cache_path(working_area.config.name))
    current = working_area.capture(repo.store, cache, dry_run=True, expected=expected)
    return current, listing_loader(repo.store, current.listings)


def checkout(repo: Repository, spec: str, *, area: str | None = None, to: str | None = None, force: bool = False,
             resume: bool = False, new_vm: bool = False, progress: Progress = None, notice: Notice = None) -> CheckoutResult:
    try:
        return _checkout(repo, spec, area=area, to=to, force=force, resume=resume, new_vm=new_vm, progress=progress, notice=notice)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        if to is not None:
            raise VmlError(f"the disk of {os.path.abspath(to)} is full: nothing of the entry was left there") from None
        raise VmlError(f"the disk of area {repo.choose_area(area).name} is full: it holds part of entry {spec} and its HEAD "
                       f"has not moved; free some space and check out again") from None


def _checkout(repo: Repository, spec: str, *, area: str | None, to: str | None, force: bool, resume: bool, new_vm: bool,
              progress: Progress, notice: Notice) -> CheckoutResult:
    if to is not None:
        if area is not None or resume or new_vm:
            raise UsageError("--to DIR restores files into a directory: it goes with none of -a AREA, --resume and --new-vm")
        return _checkout_to(repo, spec, to, progress)
    if resume and new_vm:
        raise UsageError("--resume puts a saved domain back, --new-vm makes a new one: give one of them")
    branch = spec if branch_exists(repo.git, spec) else None
    if resume:
        return _resume(repo, repo.choose_area(area), spec, branch, force=force, progress=progress)
    if new_vm:
        return _new_vm(repo, repo.choose_area(area), spec, branch, progress=progress, notice=notice)
    return _checkout_area(repo, repo.choose_area(area), spec, branch, force=force, progress=progress, notice=notice)


def _new_vm(repo: Repository, config: AreaConfig, spec: str, branch: str | None, *, progress: Progress,
            notice: Notice = None) -> CheckoutResult:
    """Make the area's domain anew from an entry: a fresh overlay of the entry's base image,
    the entry's memory size and vCPU count, started; then the entry's files and
    environment put into the guest as any checkout does."""
    if config.kind != "libvirt":
        raise UsageError(f"--new-vm makes a libvirt domain: area {config.name} is a {config.kind} area "
                         f"(vml area add NAME --libvirt URI [--identity KEY])")
    with repo.shared_lock(), repo.area_lock(config.name):
        entry_id = resolve_entry(repo, BRANCH_PREFIX + branch if branch else spec, config.name)
        info = entry_info(repo, entry_id)
        if info.base is None:
            raise UsageError(f"entry {entry_id[:12]} sits on no base image: --new-vm builds a VM from the entry's base "
                             f"(an area made with --base records it)")
        _check_base(repo, info, None)
        if "host" not in config.settings:
            raise UsageError(f"area {config.name} has no way to reach its guest's files (a QEMU domain vml makes is reached "
                             f"through a forwarded port; others need --ssh): 'vml area remove {config.name}' and add it again")
        if branch is not None:
            check_branch_free(repo.git, config.name, branch)
        domain = libvirt_module().Domain(config.settings["uri"], config.settings["domain"])
        if domain.exists():
            raise UsageError(f"domain {domain.name} exists at {domain.uri}: --new-vm makes a new one; delete the old one and its "
                             f"disk first with 'vml vm delete -a {config.name}' (entries stay)")
        base = BaseName(info.base.name, info.base.version)
        settings = dict(config.settings)
        changed = _define_vm(repo, config.name, domain, base, settings, saved_definition=repo.git.read_file(entry_id, DOMAIN_FILE))
        for key, value in {**changed, "base": str(base), "owned": "true"}.items():
            config = repo.set_area_setting(config.name, key, value)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(repo.stat_cache_path(config.name))  # another guest: nothing it vouched for holds
        domain.start()
    # Through its own forwarded port vml reaches the new guest and nothing else: it holds
    # nothing unsaved. A guest reached with --ssh is whatever answers there: the usual check.
    fresh = bool(config.settings.get("knownhosts"))
    try:
        result = _checkout_area(repo, config, spec, branch, force=fresh, progress=progress, notice=notice)
    except VmlError as error:
        raise AreaError(f"{error} (domain {domain.name} was made and started; once that is mended, put the entry's "
                        f"files in with 'vml checkout {spec} -a {config.name}{'' if fresh else ' --force'}')") from None
    made = f"domain {domain.name} was made from base {base} and the entry, and started"
    return dataclasses.replace(result, warnings=[made] + result.warnings)


def _entry_rules(info: EntryInfo) -> Rules | None:
    """The rules an entry was saved under: a checkout deletes only what they covered (an
    entry of /home alone says nothing about /etc)."""
    if info.rules is None:
        return None
    try:
        return Rules(tuple(info.rules[0]), tuple(info.rules[1]))
    except UsageError as error:
        raise CorruptObject(f"damaged {ENTRY_FILE}: {error}") from None


def _move_head(repo: Repository, config: AreaConfig, head: AreaHead, entry_id: str, spec: str, branch: str | None) -> None:
    message = f"checkout: moving to {spec}"
    if branch is not None:
        attach(repo.git, config.name, branch, message)
    elif head.branch is not None and head.entry == entry_id:
        pass  # restoring the area's own entry (e.g. to drop changes) keeps it on its branch
    else:
        detach(repo.git, config.name, entry_id, message)


def _resume(repo: Repository, config: AreaConfig, spec: str, branch: str | None, *, force: bool, progress: Progress) -> CheckoutResult:
    """Put a domain back exactly as an entry saved it with --memory: its disks, its
    definition and its memory; it runs again from where it was."""
    if config.kind != "libvirt":
        raise UsageError(f"--resume restores a domain's memory: area {config.name} is a {config.kind} area, not libvirt")
    with _opened(repo, config) as working_area, repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        entry_id = resolve_entry(repo, BRANCH_PREFIX + branch if branch else spec, config.name)
        info = entry_info(repo, entry_id)
        if info.memory is None:
            raise UsageError(f"entry {entry_id[:12]} carries no memory (save one with 'vml commit --memory' on a running domain)")
        warnings = _check_base(repo, info, config)
        domain = working_area.domain
        if domain.exists() and domain.state() not in ("shut off", "crashed") and not force:
            raise LocalChanges(f"domain {domain.name} is {domain.state()}: its current state would be lost; stop it (vml vm stop) or use --force", [])
        if branch is not None:
            check_branch_free(repo.git, config.name, branch)
        counts = working_area.resume(repo.store, ObjectId.parse(info.memory), info.memory_disks,
                                     repo.git.read_file(entry_id, DOMAIN_FILE), _temp_dir(repo), progress)
        _move_head(repo, config, head, entry_id, spec, branch)
        # The guest's files are the saved disk's now: the stat cache no longer describes them.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(repo.stat_cache_path(config.name))
        head_after = read_head(repo.git, config.name)
        return CheckoutResult(entry_id, config.location, config.name, head_after.branch, counts, [],
                              warnings + [f"domain {domain.name} resumed from the entry's memory"])


def _checkout_area(repo: Repository, config: AreaConfig, spec: str, branch: str | None, *, force: bool, progress: Progress,
                   fast_forward: str | None = None, notice: Notice = None) -> CheckoutResult:
    """Make the area's files those of entry `spec` and move its HEAD: onto `branch` if given
    (spec then names that branch), else detached at the entry. With `fast_forward` (an
    entry id), the area's own branch moves to that entry once its files are there."""
    with _opened(repo, config, notice) as working_area, repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        if fast_forward is not None:
            entry_id = fast_forward
            if head.entry is not None and head.entry != entry_id and not repo.git.is_ancestor(head.entry, entry_id):
                raise UsageError(f"{head.branch} moved to {head.entry[:12]} meanwhile and is no longer behind {spec}; pull again")
        else:
            entry_id = resolve_entry(repo, BRANCH_PREFIX + branch if branch else spec, config.name)
        target_info = entry_info(repo, entry_id)
        warnings = _check_base(repo, target_info, config)
        entry_rules = _entry_rules(target_info)
        target_root = _root_of(repo, entry_id)
        store = repo.store
        current = None
        load = listing_loader(store)
        if working_area.has_files():
            current, load = _scan_area(repo, working_area)
            base_root = _root_of(repo, head.entry) if head.entry else None
            changed = list(diff_roots(load, base_root, current.root_id)) if current.root_id != base_root else []
            # Files deleted from the area come back, and the top's own mtime is rewritten:
            # neither loses anything, so only additions and changes stop a checkout.
            at_risk = [c for c in changed if c.status != DELETED and c.path != b"."]
            if at_risk and not force:
                paths = [quote_path(c.path) for c in at_risk]
                raise LocalChanges(
                    f"area {config.name} has changes not saved in an entry ({len(paths)}: {', '.join(paths[:5])}"
                    f"{', …' if len(paths) > 5 else ''}); commit them or use --force",
                    paths,
                )
        if branch is not None:
            check_branch_free(repo.git, config.name, branch)  # before the area's files change
        counts = working_area.restore(store, load, target_root, current.root_id if current else None, progress, entry_rules=entry_rules)
        warnings += working_area.apply_entry_files(_entry_files(repo, entry_id))
        if fast_forward is not None:
            advance(repo.git, head, entry_id, f"pull: fast-forward to {spec}")
        else:
            _move_head(repo, config, head, entry_id, spec, branch)
        # Capture again (hash only) to rebuild the stat cache and to see what was not reproduced.
        target_load = listing_loader(store, memo=4096)
        after, load_after = _scan_area(repo, working_area, current.cache if current else StatCache(),
                                       expected=lambda path: node_at(target_load, target_root, path))
        after.cache.save(repo.stat_cache_path(config.name))
        not_reproduced = []
        if after.root_id != target_root:
            not_reproduced = [f"{quote_path(c.path)} ({c.status})" for c in diff_roots(load_after, target_root, after.root_id)
                              if entry_rules is None or c.status != "A" or entry_rules.admits(c.path, c.new.kind == KIND_DIR)]
        head_after = read_head(repo.git, config.name)
        return CheckoutResult(entry_id, config.location, config.name, head_after.branch, counts, not_reproduced, warnings)


def switch(repo: Repository, branch: str, *, area: str | None = None, create: bool = False, force: bool = False, progress: Progress = None) -> CheckoutResult:
    """Put the area on `branch`: a new one at its current entry (create), or an existing one
    whose tip is checked out."""
    config = repo.choose_area(area)
    if not create:
        if not branch_exists(repo.git, branch):
            raise UsageError(f"no branch named {branch!r} (create it with 'vml switch -c {branch}')")
        return _checkout_area(repo, config, branch, branch, force=force, progress=progress)
    with repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        if head.entry is not None:
            create_ref(repo.git, "branch", branch, head.entry, f"branch: created from {head.branch or head.entry[:12]}")
        else:
            check_name(repo.git, "branch", branch)
            if branch_exists(repo.git, branch):
                raise UsageError(f"a branch named {branch!r} exists already")
        attach(repo.git, config.name, branch, f"switch: moving to new branch {branch}")
        return CheckoutResult(head.entry or "", config.location, config.name, branch, RestoreProgress())


def _checkout_to(repo: Repository, spec: str, to: str, progress: Progress) -> CheckoutResult:
    target = os.path.abspath(to)
    if os.path.lexists(target) and (not os.path.isdir(target) or os.path.islink(target) or os.listdir(target)):
        raise UsageError(f"{target} exists and is not an empty directory")
    with repo.shared_lock():
        entry_id = resolve_entry(repo, spec)
        warnings = _check_base(repo, entry_info(repo, entry_id), None)
        root_id = _root_of(repo, entry_id)
        restore = Restore(repo.store, listing_loader(repo.store), progress=progress)
        existed = os.path.lexists(target)
        try:
            counts = restore.run(root_id, os.fsencode(target))
        except BaseException:
            # The directory was empty or absent: what a failed restore left there is no one's.
            _remove_partial(target, keep_top=existed)
            raise
    return CheckoutResult(entry_id, target, None, None, counts, [f"{quote_path(p)} ({why})" for p, why in counts.not_restored], warnings)


def _remove_partial(target: str, *, keep_top: bool) -> None:
    if not os.path.isdir(target) or os.path.islink(target):
        return
    for name in os.listdir(target):
        path = os.path.join(target, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if not keep_top:
        with contextlib.suppress(OSError):
            os.rmdir(target)


# -- diff and status

PATCH_LIMIT = 8 * 1024 * 1024  # bytes per side beyond which no text diff is attempted


@dataclass(frozen=True, slots=True)
class DiffEntry:
    path: str  # the path's bytes as text, losslessly: bytes that are not UTF-8 are lone surrogates (os.fsencode undoes it)
    status: str  # git's A added, D deleted, M content changed, T type changed; P properties only (vml's own)
    changes: list[str]  # what changed: content, type, links, mode, owner, mtime, xattrs, flags
    old: dict | None
    new: dict | None
    patch: str | None = None  # a unified diff of the content, when asked for
    path_bytes: str | None = None  # base64 of the path when it is not valid UTF-8 (then `path` alone is not portable)


def _node_summary(node) -> dict | None:
    if node is None:
        return None
    return {
        "kind": KIND_NAMES[node.kind],
        "mode": f"{node.mode:04o}",
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "size": node.size,
        "mtime_ns": node.mtime_ns,
        "xattrs": sorted(lossless_text(name) for name, _value in node.xattrs),
        "target": lossless_text(node.target) if node.target is not None else None,
        "flags": flag_letters(node.flags),
    }


def parse_paths(paths: tuple[str, ...] | list[str]) -> list[bytes]:
    """Paths as users type them (relative to the area's top, '/' allowed in front) as the
    '/'-separated relative bytes manifests use; b"" for the whole tree."""
    parsed = []
    for text in paths:
        parts = [p for p in os.fsencode(text).split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            raise UsageError(f"path {text!r} goes up with '..'; give paths from the area's top")
        parsed.append(b"/".join(parts))
    return parsed


def diff(
    repo: Repository,
    old: str,
    new: str | None = None,
    *,
    area: str | None = None,
    paths: tuple[str, ...] | list[str] = (),
    patch: bool | None = False,
) -> list[DiffEntry]:
    """Changes from entry `old` to entry `new`, or to the area's current files. `patch`:
    True adds a unified diff to every changed regular file; None does so only when one
    path was given and it is a file."""
    store = repo.store
    wanted = parse_paths(paths) or [b""]
    old_id = resolve_entry(repo, old, area)
    old_root = _root_of(repo, old_id)
    old_files = _entry_files(repo, old_id) if not paths else {}
    if new is not None:
        new_id = resolve_entry(repo, new, area)
        result = _diff_result(store, listing_loader(store), old_root, _root_of(repo, new_id), wanted, None, patch)
        return result + (_env_diff(old_files, _entry_files(repo, new_id)) if not paths else [])
    with _opened(repo, repo.choose_area(area)) as working_area:
        with repo.shared_lock():
            current, load = _scan_area(repo, working_area)
        result = _diff_result(store, load, old_root, current.root_id, wanted, working_area, patch)
        return result + (_env_diff(old_files, working_area.entry_files()) if not paths else [])


def _diff_result(store, load, old_root, new_root, wanted: list[bytes], working_area, patch: bool | None) -> list[DiffEntry]:
    changes = list(diff_paths(load, old_root, new_root, wanted))
    if patch is None:  # a single file asked for by name: show its content
        patch = len(wanted) == 1 and any(c.path == wanted[0] and KIND_FILE in (_kind(c.old), _kind(c.new)) for c in changes)
    return [_diff_entry(c, store, working_area if patch else None, patch) for c in changes]


def _kind(node) -> int | None:
    return node.kind if node is not None else None


def _diff_entry(change, store, working_area, patch: bool) -> DiffEntry:
    text = _patch(change, store, working_area) if patch else None
    return DiffEntry(lossless_text(change.path), change.status, list(change.parts), _node_summary(change.old),
                     _node_summary(change.new), text, path_bytes(change.path))


def _patch(change, store, working_area) -> str | None:
    """A unified diff of a regular file's content, as git prints it; None if no file content changed."""
    old_file = change.old if change.old is not None and change.old.kind == KIND_FILE else None
    new_file = change.new if change.new is not None and change.new.kind == KIND_FILE else None
    if change.status == PROPERTIES or (old_file is None and new_file is None):
        return None
    if max(old_file.size if old_file else 0, new_file.size if new_file else 0) > PATCH_LIMIT:
        return f"{quote_path(change.path)}: larger than {PATCH_LIMIT // (1024 * 1024)} MiB, no text diff\n"
    old_data = read_content(store, old_file) if old_file else b""
    if new_file is None:
        new_data = b""
    elif working_area is not None:
        new_data = working_area.read_file(change.path, PATCH_LIMIT + 1)
    else:
        new_data = read_content(store, new_file)
    try:
        if b"\0" in old_data or b"\0" in new_data:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte")
        old_lines = old_data.decode().splitlines(keepends=True)
        new_lines = new_data.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"Binary files {quote_path(b'a/' + change.path)} and {quote_path(b'b/' + change.path)} differ\n"
    lines = []
    from_name = quote_path(b"a/" + change.path) if old_file else "/dev/null"  # as git names them, quoted as a whole
    to_name = quote_path(b"b/" + change.path) if new_file else "/dev/null"
    for line in difflib.unified_diff(old_lines, new_lines, from_name, to_name):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


@dataclass(frozen=True, slots=True)
class StatusResult:
    area: str
    kind: str
    location: str
    branch: str | None
    entry: str | None
    summary: str | None  # first line of the entry's message
    clean: bool
    changes: list[DiffEntry]
    vm: str | None = None  # a libvirt area's domain state: running, paused, shut off...


def status(repo: Repository, *, area: str | None = None, notice: Notice = None) -> StatusResult:
    """The area's HEAD and what changed since its entry (files are read only where the stat cache can't vouch)."""
    config = repo.choose_area(area)
    with _opened(repo, config, notice) as working_area, repo.shared_lock():
        head = read_head(repo.git, config.name)
        current, load = _scan_area(repo, working_area)
        base_root = _root_of(repo, head.entry) if head.entry else None
        changes = [_diff_entry(c, None, None, False) for c in diff_roots(load, base_root, current.root_id)]
        vm = working_area.domain.state() if config.kind == "libvirt" else None
        if head.entry is not None:
            changes += _env_diff(_entry_files(repo, head.entry), working_area.entry_files())
    summary = _summary(repo.git.commit(head.entry).message) if head.entry else None
    return StatusResult(config.name, config.kind, config.location, head.branch, head.entry, summary, not changes, changes, vm)


def _summary(message: str) -> str:
    return (message.strip().splitlines() or [""])[0]


# -- branches, tags, switch, rm, reflog


@dataclass(frozen=True, slots=True)
class RefResult:
    name: str
    entry: str
    summary: str
    areas: list[str] = field(default_factory=list)


def _ref_result(repo: Repository, info: RefInfo) -> RefResult:
    return RefResult(info.name, info.entry, _summary(repo.git.commit(info.entry).message), info.areas)


def branch_list(repo: Repository) -> list[RefResult]:
    return [_ref_result(repo, info) for info in list_refs(repo.git, BRANCH_PREFIX)]


def tag_list(repo: Repository) -> list[RefResult]:
    return [_ref_result(repo, info) for info in list_refs(repo.git, TAG_PREFIX)]


def ref_create(repo: Repository, kind: str, name: str, start: str | None = None, *, area: str | None = None) -> RefResult:
    """A new branch or tag at `start` (default: the area's current entry)."""
    with repo.shared_lock():  # gc must not drop an entry between resolving and naming it
        entry = resolve_entry(repo, start or "HEAD", area)
        create_ref(repo.git, kind, name, entry, f"{kind}: created from {start or 'HEAD'}")
    return RefResult(name, entry, _summary(repo.git.commit(entry).message))


def branch_delete(repo: Repository, name: str, *, force: bool = False) -> RefResult:
    entry = delete_branch(repo.git, name, force=force, message="branch: deleted")
    return RefResult(name, entry, _summary(repo.git.commit(entry).message))


def tag_delete(repo: Repository, name: str) -> RefResult:
    entry = delete_tag(repo.git, name)
    return RefResult(name, entry, _summary(repo.git.commit(entry).message))


@dataclass(frozen=True, slots=True)
class RmResult:
    entry: str
    summary: str
    moved: dict[str, tuple[str, str]]  # ref -> (old tip, new tip)
    rewritten: int
    kept_by: list[str]
    areas_moved: list[str]


def rm(repo: Repository, spec: str, *, area: str | None = None) -> RmResult:
    """Drop one entry from every branch and detached area HEAD whose history holds it."""
    with repo.shared_lock(), contextlib.ExitStack() as area_locks:
        for config in repo.areas():  # no commit may move a branch while it is rewritten
            area_locks.enter_context(repo.area_lock(config.name))
        entry = resolve_entry(repo, spec, area)
        summary = _summary(repo.git.commit(entry).message)
        dropped = drop_entry(repo.git, entry, f"rm: dropped {entry[:12]} {summary}")
    return RmResult(entry, summary, dropped.moved, dropped.rewritten, dropped.kept_by, dropped.areas_moved)


@dataclass(frozen=True, slots=True)
class ReflogEntry:
    selector: str  # what to type to name this position: HEAD@{2}, main@{0}
    entry: str | None  # None when the line records a deletion
    message: str
    time: int


def reflog(repo: Repository, ref: str | None = None, *, area: str | None = None, all_refs: bool = False, limit: int | None = None) -> list[ReflogEntry]:
    if all_refs:
        # The repository's own HEAD only mirrors its default branch: leave it out.
        names = [name for name in repo.git.reflog_names() if name != "HEAD" or not repo.areas()]
        shown = {name: name for name in names}
    elif ref is not None and ref not in ("HEAD", "@"):
        candidates = [ref] if ref.startswith("refs/") else [p + ref for p in (BRANCH_PREFIX, TAG_PREFIX, REMOTE_PREFIX)]
        full = next((name for name in candidates if repo.git.has_reflog(name)), None)
        if full is None:
            raise UsageError(f"no reflog for {ref!r}")
        names, shown = [full], {full: ref}
    else:
        try:
            config = repo.choose_area(area)
        except AreaError:
            if area is not None or repo.areas():
                raise
            config = None
        name = AREA_PREFIX + config.name if config else "HEAD"
        names, shown = [name], {name: "HEAD"}
    found = []
    for name in names:
        for position, line in enumerate(repo.git.reflog(name)):
            entry = line.new if line.new != ZERO else None
            found.append(ReflogEntry(f"{shown[name]}@{{{position}}}", entry, line.message, line.time))
    if all_refs:
        found.sort(key=lambda e: -e.time)
    return found[:limit] if limit is not None else found


# -- fsck and gc


def reachable_entries(repo: Repository, *, reflogs: bool = True) -> list[str]:
    """Every entry reachable from a ref, and (with `reflogs`) from the entry each reflog line protects."""
    starts = _all_starts(repo)
    for name in repo.git.reflog_names() if reflogs else ():
        for line in repo.git.reflog(name):
            commit_id = protected_entry(line)
            if commit_id is not None and commit_id not in starts and repo.git.has_object(commit_id):
                starts.append(commit_id)
    return list(repo.git.walk(starts))


@dataclass(frozen=True, slots=True)
class DamagedEntry:
    entry: str
    message: str
    paths: list[tuple[str, str]]  # (path, reason)


@dataclass(frozen=True, slots=True)
class FsckReport:
    entries: int
    packs: int
    blobs: int
    bytes: int
    damaged: list[DamagedEntry]
    problems: list[str]
    warnings: list[str]  # defects that lost nothing (a damaged index whose packs were read directly)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


def fsck(repo: Repository, *, progress: Callable[[int, int], None] | None = None) -> FsckReport:
    with repo.shared_lock():
        store = repo.store
        packs = check_packs(store, progress)
        checker = TreeChecker(store, listing_loader(store), packs.damaged_blobs)
        damaged = []
        problems = list(packs.problems)
        git_problems, git_warnings = repo.git.git_fsck()
        problems += git_problems
        warnings = list(packs.warnings) + git_warnings
        entries = reachable_entries(repo)
        for entry_id in entries:
            message = _summary(repo.git.commit(entry_id).message)
            try:
                roots = entry_info(repo, entry_id).manifests()
            except (UnknownEntry, CorruptObject, UsageError) as error:
                damaged.append(DamagedEntry(entry_id, message, [("/", str(error))]))
                continue
            found = [problem for root_id in roots for problem in checker.check_root(root_id)]
            if found:
                damaged.append(DamagedEntry(entry_id, message, [(quote_path(p), why) for p, why in found]))
        return FsckReport(len(entries), packs.packs, packs.blobs, packs.bytes, damaged, problems, warnings)


@dataclass(frozen=True, slots=True)
class GcResult:
    bytes_freed: int  # chunk store and git objects together
    bytes_after: int
    blobs_removed: int
    packs_deleted: int
    packs_rewritten: int
    packs_after: int
    reflog_lines_expired: int
    git_objects_removed: int


def gc(repo: Repository, *, expire: str | None = None, progress: Callable[[int, int], None] | None = None) -> GcResult:
    """Expire old reflog lines, then remove every chunk, listing and git object no ref or
    remaining reflog line reaches. `expire`: when lines of unreachable entries go (default 30 days)."""
    now = time.time()
    unreachable_before = parse_when(expire, now) if expire is not None else now - EXPIRE_UNREACHABLE
    with repo.exclusive_lock():
        expired = expire_reflogs(
            repo.git,
            set(reachable_entries(repo, reflogs=False)),
            unreachable_before=unreachable_before,
            all_before=now - EXPIRE_ALL,
        )
        _check_no_push(repo)
        entries = reachable_entries(repo)
        # Before anything is deleted: no kept reflog line may name a commit that goes.
        rewrite_lost_predecessors(repo.git, set(entries))
        stats = collect(repo.store, _live_blobs(repo, entries), progress, before_delete=lambda: _check_no_push(repo))
        git_removed, git_freed = repo.git.prune_loose_objects(repo.git.objects_of(entries))
        repo.close()
    return GcResult(
        bytes_freed=stats.bytes_freed + git_freed,
        bytes_after=stats.bytes_after,
        blobs_removed=stats.blobs_removed,
        packs_deleted=stats.packs_deleted,
        packs_rewritten=stats.packs_rewritten,
        packs_after=stats.packs_after,
        reflog_lines_expired=expired,
        git_objects_removed=git_removed,
    )


def _check_no_push(repo: Repository) -> None:
    """gc waits for pushes into this repository (they cannot take its lock over a transport):
    a push relies on blobs it saw here, which may be unreachable until its ref moves."""
    locks = os.path.join(repo.vml_dir, "locks")
    for name in os.listdir(locks):
        if not name.startswith("push-"):
            continue
        path = os.path.join(locks, name)
        if time.time() - os.path.getmtime(path) > UPLOAD_GRACE:
            os.unlink(path)  # left by a push that was cut off long ago
        else:
            raise VmlError(f"a push into this repository is in progress ({path}); run gc again when it is done")


def _live_blobs(repo: Repository, entries: list[str]) -> set[bytes]:
    load = listing_loader(repo.store)
    live: set[bytes] = set()
    seen: set[bytes] = set()
    for entry_id in entries:
        try:
            for root_id in entry_info(repo, entry_id).manifests():
                live.add(root_id)
                live.add(root_node(load, root_id).tree)
                for _path, node in walk_nodes(load, root_id, seen=seen):
                    if node.kind == KIND_DIR:
                        live.add(node.tree)
                    elif node.chunks:
                        live.update(node.chunk_ids())
        except CorruptObject as error:
            raise VmlError(f"entry {entry_id[:12]} is damaged ({error}); gc stops so nothing it may need is removed — run 'vml fsck'") from None
    return live


# -- remotes: push, fetch, pull, clone (vml/exchange, over vml/transport)

REMOTE_SECTION = "remote"


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    name: str
    url: str


def _check_remote_name(repo: Repository, name: str) -> None:
    if "/" in name or not repo.git.is_valid_ref_name(f"{REMOTE_PREFIX}{name}/main"):
        raise UsageError(f"{name!r} is not a valid remote name (letters, digits, '-', '_', '.')")


def remote_add(repo: Repository, name: str, url: str) -> RemoteInfo:
    _check_remote_name(repo, name)
    location = parse_url(url)  # a bad URL is refused now, not at the first push
    if "://" not in url:
        url = location.path  # absolute: the repository is found from any directory
    if repo.git.config_get(f"{REMOTE_SECTION}.{name}.url") is not None:
        raise UsageError(f"a remote named {name!r} exists already (vml remote remove {name})")
    repo.git.config_set(f"{REMOTE_SECTION}.{name}.url", url)
    return RemoteInfo(name, url)


def remote_remove(repo: Repository, name: str) -> RemoteInfo:
    url = _remote_url(repo, name)
    for ref in repo.git.ref_names(f"{REMOTE_PREFIX}{name}/"):
        repo.git.delete_ref(ref)
        repo.git.delete_reflog(ref)
    repo.git.config_delete(f"{REMOTE_SECTION}.{name}.url")
    return RemoteInfo(name, url)


def remote_list(repo: Repository) -> list[RemoteInfo]:
    found = []
    for key, value in repo.git.config_items(f"{REMOTE_SECTION}."):
        if key.endswith(".url"):
            found.append(RemoteInfo(key[len(REMOTE_SECTION) + 1 : -len(".url")], value))
    return sorted(found, key=lambda info: info.name)


def _remote_url(repo: Repository, name: str) -> str:
    url = repo.git.config_get(f"{REMOTE_SECTION}.{name}.url")
    if url is None:
        known = ", ".join(info.name for info in remote_list(repo)) or "none"
        raise UsageError(f"no remote named {name!r} (remotes: {known}); add one with 'vml remote add {name} URL'")
    return url


@contextlib.contextmanager
def _connected(url: str, accept_new_host_key: bool):
    remote = RemoteRepository(open_transport(url, accept_new_host_key=accept_new_host_key))
    try:
        yield remote
    finally:
        remote.close()


def _short(ref: str) -> str:
    for prefix in (BRANCH_PREFIX, TAG_PREFIX):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


@dataclass(frozen=True, slots=True)
class RefChange:
    ref: str  # short name: main, v1
    old: str | None
    new: str
    status: str  # up to date, new, fast-forward, forced, rejected
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PushResult:
    remote: str
    url: str
    refs: list[RefChange]
    commits: int
    blobs: int
    packs: int
    blob_bytes: int
    bytes_sent: int  # everything that crossed the transport, git objects and refs included
    seconds: float

    @property
    def rejected(self) -> bool:
        return any(change.status == REJECTED for change in self.refs)


def _refs_to_push(repo: Repository, names_given: tuple[str, ...], tags: bool, area: str | None) -> dict[str, str]:
    refs: dict[str, str] = {}
    for name in names_given:
        full = [name] if name.startswith((BRANCH_PREFIX, TAG_PREFIX)) else [BRANCH_PREFIX + name, TAG_PREFIX + name]
        for ref in full:
            target = repo.git.ref_target(ref)
            if target is not None:
                refs[ref] = target
                break
        else:
            raise UsageError(f"no branch or tag named {name!r} to push")
    if not names_given:
        configs = [repo.choose_area(area)] if area is not None or len(repo.areas()) == 1 else []
        branch = read_head(repo.git, configs[0].name).branch if configs else None
        if branch is not None and branch_exists(repo.git, branch):
            refs[BRANCH_PREFIX + branch] = repo.git.ref_target(BRANCH_PREFIX + branch)
        elif not tags:
            refs.update((ref, repo.git.ref_target(ref)) for ref in repo.git.ref_names(BRANCH_PREFIX))
    if tags:
        refs.update((ref, repo.git.ref_target(ref)) for ref in repo.git.ref_names(TAG_PREFIX))
    if not refs:
        raise UsageError("nothing to push: this repository has no entries on a branch yet")
    return refs


def _bases_to_push(repo: Repository, remote: RemoteRepository, local: dict[str, str], remote_refs: dict[str, str],
                   differential: bool) -> dict[str, str]:
    """The base refs the entries being pushed sit on and the remote lacks; an error if the
    remote holds another image under the same name and version."""
    have = [commit for commit in remote_refs.values() if repo.git.has_object(commit)]
    wanted: dict[str, BaseRef] = {}
    for commit in repo.git.commits_between(list(local.values()), have):
        info = entry_info(repo, commit)
        if info.base is not None and info.kind != "base":
            wanted[BaseName(info.base.name, info.base.version).ref] = info.base
    to_send = {}
    for ref, base in wanted.items():
        local_commit = repo.git.ref_target(ref)
        if local_commit is None:
            raise UsageError(f"the entries sit on base {base}, which this repository lacks: fetch or add it before pushing")
        remote_commit = remote_refs.get(ref)
        if remote_commit is None:
            if differential:
                raise UsageError(f"{remote.location} lacks base {base} ({base.digest[:19]}…): a differential push needs it there; "
                                 f"push without --differential to send the base too")
            to_send[ref] = local_commit
        elif remote_commit != local_commit and remote_entry_info(remote, remote_commit).base.digest != base.digest:
            raise UsageError(f"{remote.location} holds another image as base {base} (another digest): rename one of them")
    return to_send


def push(repo: Repository, remote_name: str = "origin", names_given: tuple[str, ...] = (), *, force: bool = False,
         tags: bool = False, area: str | None = None, differential: bool = False, accept_new_host_key: bool = False,
         progress: Progress = None) -> PushResult:
    """Send branches (default: the area's branch) and with --tags every tag to a remote:
    only the entries and blobs it lacks; each ref moves only by fast-forward unless forced.
    The base images the entries sit on go too, unless `differential`: then the remote must
    have them already (same name, version and digest)."""
    url = _remote_url(repo, remote_name)
    started = time.monotonic()
    local = _refs_to_push(repo, names_given, tags, area)
    with repo.shared_lock(), _connected(url, accept_new_host_key) as remote:
        remote_refs = remote.refs()
        local.update(_bases_to_push(repo, remote, local, remote_refs, differential))
        updates = plan_updates(repo.git, local, remote_refs, force=force)
        updates, stats = send(repo.git, repo.store, remote, updates, repo.store.tmp_dir, progress)
        for update in updates:
            if update.name.startswith(BRANCH_PREFIX) and update.status != REJECTED:
                tracking = f"{REMOTE_PREFIX}{remote_name}/{_short(update.name)}"
                repo.git.set_direct(tracking, update.new, f"push: {update.status}")
        bytes_sent = remote.transport.bytes_sent
    changes = [RefChange(_short(u.name), u.old, u.new, u.status, u.reason) for u in updates]
    return PushResult(remote_name, url, changes, stats.commits, stats.blobs, stats.packs, stats.bytes, bytes_sent,
                      round(time.monotonic() - started, 3))


@dataclass(frozen=True, slots=True)
class FetchResult:
    remote: str
    url: str
    refs: list[RefChange]  # remote-tracking branches (origin/main) and tags that moved
    commits: int
    blobs: int
    blob_bytes: int
    bytes_received: int
    seconds: float
    default_branch: str | None  # the branch the remote's HEAD names


def fetch(repo: Repository, remote_name: str = "origin", *, accept_new_host_key: bool = False, progress: Progress = None) -> FetchResult:
    """Bring the remote's branches (as remote-tracking branches NAME/BRANCH) and tags, with
    only the entries and blobs this repository lacks."""
    url = _remote_url(repo, remote_name)
    started = time.monotonic()
    with repo.shared_lock(), _connected(url, accept_new_host_key) as remote:
        remote_refs = remote.refs()
        objects, roots = read_history(repo.git, remote, sorted(set(remote_refs.values())))
        stats = receive_blobs(repo.store, remote, [root for entry_roots in roots.values() for root in entry_roots], progress)
        for git_object in objects:  # blobs first, then git objects: a commit never lacks its data
            repo.git.write_raw(git_object.type_name, git_object.content, git_object.id)
        changes = _update_tracking(repo, remote_name, remote_refs)
        bytes_received = remote.transport.bytes_received
        default = remote.default_branch()
    return FetchResult(remote_name, url, changes, len(roots), stats.blobs, stats.bytes, bytes_received,
                       round(time.monotonic() - started, 3), default)


def _update_tracking(repo: Repository, remote_name: str, remote_refs: dict[str, str]) -> list[RefChange]:
    changes = []
    for ref, target in remote_refs.items():
        if not repo.git.is_valid_ref_name(ref):
            changes.append(RefChange(ref, None, target, REJECTED, "not a valid ref name; ignored"))
        elif ref.startswith(BRANCH_PREFIX):
            local_ref = f"{REMOTE_PREFIX}{remote_name}/{ref[len(BRANCH_PREFIX):]}"
            old = repo.git.ref_target(local_ref)
            if old != target:
                repo.git.ensure_reflog(local_ref)
                repo.git.set_direct(local_ref, target, f"fetch: {'new' if old is None else 'update'} from {remote_name}")
                changes.append(RefChange(f"{remote_name}/{ref[len(BRANCH_PREFIX):]}", old, target, "new" if old is None else "updated"))
        elif ref.startswith(BASE_PREFIX):
            old = repo.git.ref_target(ref)
            if old is None:
                repo.git.set_direct(ref, target, f"fetch: base from {remote_name}")
                changes.append(RefChange("base " + ref[len(BASE_PREFIX):].replace("/", ":"), None, target, "new base"))
            elif old != target and entry_info(repo, old).base.digest != entry_info(repo, target).base.digest:
                changes.append(RefChange("base " + ref[len(BASE_PREFIX):].replace("/", ":"), old, target, REJECTED,
                                         "a local base of that name and version is another image; kept"))
        elif ref.startswith(TAG_PREFIX):
            old = repo.git.ref_target(ref)
            if old is None:
                repo.git.set_direct(ref, target, f"fetch: tag from {remote_name}")
                changes.append(RefChange(_short(ref), None, target, "new tag"))
            elif old != target:
                changes.append(RefChange(_short(ref), old, target, REJECTED, "a local tag of that name names another entry; kept"))
    return changes


@dataclass(frozen=True, slots=True)
class PullResult:
    fetched: FetchResult
    area: str
    branch: str
    old: str | None
    new: str
    status: str  # "up to date" or "fast-forward"
    checkout: CheckoutResult | None


def pull(repo: Repository, remote_name: str = "origin", branch: str | None = None, *, area: str | None = None,
         accept_new_host_key: bool = False, progress: Progress = None, transfer_progress: Progress = None) -> PullResult:
    """Fetch, then fast-forward the area's branch to the remote's and check it out into the area."""
    config = repo.choose_area(area)
    head = read_head(repo.git, config.name)
    if head.branch is None:
        raise UsageError(f"area {config.name} is detached (not on a branch): 'vml switch BRANCH' first")
    fetched = fetch(repo, remote_name, accept_new_host_key=accept_new_host_key, progress=transfer_progress)
    remote_branch = branch or head.branch
    target = repo.git.ref_target(f"{REMOTE_PREFIX}{remote_name}/{remote_branch}")
    if target is None:
        raise UsageError(f"the remote {remote_name} has no branch {remote_branch!r}")
    if head.entry == target or (head.entry is not None and repo.git.is_ancestor(target, head.entry)):
        return PullResult(fetched, config.name, head.branch, head.entry, head.entry or target, UP_TO_DATE, None)
    if head.entry is not None and not repo.git.is_ancestor(head.entry, target):
        raise UsageError(
            f"{head.branch} and {remote_name}/{remote_branch} have diverged (vml pulls by fast-forward only): "
            f"look with 'vml log --all --graph', then keep one line, e.g. 'vml branch mine' and 'vml checkout {remote_name}/{remote_branch}'"
        )
    result = _checkout_area(repo, config, f"{remote_name}/{remote_branch}", head.branch, force=False, progress=progress,
                            fast_forward=target)
    return PullResult(fetched, config.name, head.branch, head.entry, target, FAST_FORWARD, result)


@dataclass(frozen=True, slots=True)
class CloneResult:
    path: str
    url: str
    branch: str | None
    entry: str | None
    fetched: FetchResult


def clone(url: str, directory: str | None = None, *, accept_new_host_key: bool = False, progress: Progress = None) -> CloneResult:
    """A new repository DIR/.vml with `origin` set to URL, its entries fetched and its
    default branch made a local branch."""
    location = parse_url(url)
    if directory is None:
        name = os.path.basename(location.path.rstrip("/")) or "repository"
        for suffix in (".vml", ".git"):
            name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
        directory = name
    target = os.path.abspath(directory)
    created = not os.path.exists(target)
    repo = Repository.init(target)
    try:
        url = remote_add(repo, "origin", url).url
        fetched = fetch(repo, "origin", accept_new_host_key=accept_new_host_key, progress=progress)
        default = fetched.default_branch
        branches = {change.ref.split("/", 1)[1]: change.new for change in fetched.refs if change.ref.startswith("origin/")}
        branch = default if default in branches else next(iter(sorted(branches)), None)
        if branch is not None:
            repo.git.set_direct(BRANCH_PREFIX + branch, branches[branch], f"clone: from {url}")
            repo.git.set_symbolic("HEAD", BRANCH_PREFIX + branch)
    except BaseException:
        repo.close()
        shutil.rmtree(target if created else os.path.join(target, ".vml"), ignore_errors=True)
        raise
    repo.close()
    return CloneResult(target, url, branch, branches.get(branch) if branch else None, fetched)


# -- bundles: export and import


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: str
    kind: str
    entry: str
    ref: str | None
    requires: list[str]
    commits: int
    blobs: int
    bytes: int


def export(repo: Repository, spec: str, output: str, *, kind: str = FULL, since: str | None = None, area: str | None = None) -> ExportResult:
    """Write entry `spec` to one bundle file: --full (it and its history, needing nothing),
    --incremental (what is new since its parent), --since REF (what is new since REF)."""
    if since is not None and kind not in (FULL, SINCE):
        raise UsageError("--since replaces --full/--incremental/--differential: give only one")
    with repo.shared_lock():
        entry = resolve_entry(repo, spec, area)
        entry_info(repo, entry)  # a vml entry, not any git commit
        ref = next((prefix + spec for prefix in (BRANCH_PREFIX, TAG_PREFIX) if repo.git.ref_target(prefix + spec) == entry), None)
        if since is not None:
            kind, requires = SINCE, [resolve_entry(repo, since, area)]
            if requires[0] == entry:
                raise UsageError(f"{spec} and {since} are the same entry: the bundle would be empty")
        elif kind == INCREMENTAL:
            requires = list(repo.git.commit(entry).parents)
            if not requires:
                raise UsageError(f"{spec} has no parent entry: export it with --full")
        else:
            requires = []
        base, base_roots = None, []
        if kind == DIFFERENTIAL:
            base = entry_info(repo, entry).base
            if base is None:
                raise UsageError(
                    f"entry {entry[:12]} records no base image, so there is nothing to be differential to "
                    f"(make the area with --base NAME:VERSION); use --full, --incremental or --since REF"
                )
            _base_commit, base_info = _base_entry(repo, BaseName(base.name, base.version))
            if base_info.base.digest != base.digest:
                raise UsageError(f"base {base} here is another image than the one entry {entry[:12]} was saved on (digests differ)")
            base_roots = base_info.manifests()
        carried = {}
        entry_base = entry_info(repo, entry).base
        if kind == FULL and entry_base is not None:  # a full bundle needs nothing: its base goes too
            base_ref = BaseName(entry_base.name, entry_base.version).ref
            carried = {base_ref: _base_entry(repo, BaseName(entry_base.name, entry_base.version))[0]}
        info = write_bundle(repo.git, repo.store, output, entry=entry, ref=ref, kind=kind, requires=requires,
                            tmp_dir=repo.store.tmp_dir, base=base, base_roots=base_roots, bases=carried)
    return ExportResult(os.path.abspath(output), info.kind, info.entry, info.ref, info.requires, len(info.commits), info.blobs, info.bytes)


@dataclass(frozen=True, slots=True)
class ImportResult:
    path: str
    kind: str
    entry: str
    ref: str | None  # the branch or tag now at the entry
    status: str  # new, fast-forward, forced, up to date
    requires: list[str]
    commits: int
    blobs: int
    privileged: int = 0  # setuid/setgid-root files and device nodes among what it brought
    privileged_paths: list[str] = field(default_factory=list)  # the first of them, "path (why)"


def import_bundle(repo: Repository, path: str, *, as_name: str | None = None, force: bool = False) -> ImportResult:
    """Check a bundle whole (its requirements, every hash, that its entries are complete),
    then store it and set the branch or tag it was exported from (or --as BRANCH)."""
    with repo.shared_lock():
        info, store_all = read_bundle(repo.git, repo.store, path)
        ref = BRANCH_PREFIX + as_name if as_name else info.ref
        if ref is None:
            raise UsageError("this bundle was exported from an entry id, not a branch or tag: name a branch with --as BRANCH")
        if as_name:
            check_name(repo.git, "branch", as_name)
        current = repo.git.ref_target(ref)
        if current == info.entry:
            status = UP_TO_DATE
        elif current is None:
            status = "new"
        elif not ref.startswith(TAG_PREFIX) and _leads_to(repo, current, info):
            status = FAST_FORWARD
        elif force:
            status = "forced"
        else:
            what = "tag" if ref.startswith(TAG_PREFIX) else "branch"
            raise UsageError(
                f"{what} {_short(ref)} is at {current[:12]}, which the bundle's entry does not descend from: "
                f"import it under another name with --as BRANCH, or replace it with --force"
            )
        on_it = areas_on_branch(repo.git, _short(ref)) if ref.startswith(BRANCH_PREFIX) and status != UP_TO_DATE and current else []
        if on_it:
            raise UsageError(
                f"branch {_short(ref)} is checked out in area {on_it[0]}, whose files would no longer match it: "
                f"import with --as BRANCH, then 'vml checkout BRANCH -a {on_it[0]}'"
            )
        store_all()  # objects first: nothing names them until the refs below move
        for base_ref, base_commit in info.bases.items():
            held = repo.git.ref_target(base_ref)
            if held not in (None, base_commit) and entry_info(repo, held).base.digest != entry_info(repo, base_commit).base.digest:
                name = base_ref[len(BASE_PREFIX):].replace("/", ":")
                raise UsageError(f"the bundle's base {name} is another image than the base {name} here (digests differ); nothing was recorded")
        for base_ref, base_commit in info.bases.items():
            if repo.git.ref_target(base_ref) is None:
                repo.git.set_direct(base_ref, base_commit, f"import: base from {os.path.basename(path)}")
        if status != UP_TO_DATE:
            repo.git.ensure_reflog(ref)
            repo.git.update_ref(ref, info.entry, current, f"import: {os.path.basename(path)}")
    count, shown = info.privileged
    return ImportResult(os.path.abspath(path), info.kind, info.entry, _short(ref), status, info.requires, len(info.commits), info.blobs,
                        count, [f"{quote_path(p)} ({why})" for p, why in shown])


def _leads_to(repo: Repository, current: str, info) -> bool:
    """Whether the bundle's entry descends from `current`, judged before anything is stored:
    `current` is one of the bundle's commits, or a required entry or one of their ancestors."""
    if current in info.commits:
        return True
    return any(current == required or repo.git.is_ancestor(current, required) for required in info.requires)
