"""vml area add / remove / show / list: an area's settings, rules and HEAD (its files, guest
or domain are never touched by a removal)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass

from vml.api._common import area_rules
from vml.areas.kinds import DIR, SSH, default_rules, is_vm, open_area, open_domain, provisioning, ssh_target
from vml.areas.presets import parse_preset
from vml.areas.protocol import AreaConfig
from vml.areas.rules import Rules, save_rules
from vml.config import PRESETS_SETTING, area_presets, check_area_name
from vml.entry import base_entry
from vml.errors import UsageError, VmlError
from vml.refs.bases import parse_base
from vml.refs.heads import areas_on_branch, attach, read_head, remove_head
from vml.refs.namespace import BRANCH_PREFIX, TAG_PREFIX
from vml.repo import Repository


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
    presets: tuple[str, ...] = ()  # rule presets, NAME or NAME=PATH (vml/areas/presets.py)


def area_add(repo: Repository, name: str, options: AreaOptions | None = None, *, directory: str | None = None,
             branch: str | None = None) -> AreaInfo:
    check_area_name(name)
    options = options or AreaOptions(directory=directory)
    if any(existing.name == name for existing in repo.areas()):
        raise UsageError(f"area {name!r} exists already")
    if options.libvirt is not None:
        config = _libvirt_area(repo, name, options)
    elif (options.directory is None) == (options.ssh is None):
        raise UsageError("say where the area's files are: --dir PATH, --ssh user@host[:port] or --libvirt URI")
    elif options.directory is not None:
        location = os.path.abspath(options.directory)
        if os.path.exists(location) and not os.path.isdir(location):
            raise UsageError(f"{location} is not a directory")
        _check_apart(os.path.realpath(location), os.path.realpath(repo.path))
        config = AreaConfig(name, DIR, location)
    else:
        config = AreaConfig(name, SSH, "", _ssh_settings(options))
        config = dataclasses.replace(config, location=str(ssh_target(config)))
    try:
        return _add_area(repo, config, options, branch)
    except BaseException:
        if any(existing.name == config.name for existing in repo.areas()):
            repo.remove_area(config.name)
        if is_vm(config) and options.base is not None:  # the domain defined for it goes too
            with contextlib.suppress(VmlError):
                provisioning().delete_vm(repo, config, open_domain(config))
        raise


def _add_area(repo: Repository, config: AreaConfig, options: AreaOptions, branch: str | None) -> AreaInfo:
    name = config.name
    if options.base is not None:
        base_entry(repo.git, parse_base(repo.git, options.base))  # it must exist
        config = dataclasses.replace(config, settings={**config.settings, "base": options.base})
    if options.presets:
        used = list(dict.fromkeys(str(parse_preset(text)) for text in options.presets))
        config = dataclasses.replace(config, settings={**config.settings, PRESETS_SETTING: json.dumps(used)})
    defaults = default_rules(config.kind)
    rules = Rules(options.include or defaults.include, defaults.exclude + tuple(options.exclude))
    if branch is None:
        branch = "main" if not areas_on_branch(repo.git, "main") else name
    if options.accept_new_host_key:
        if options.ssh is None:
            raise UsageError("--accept-new-host-key goes with --ssh")
        with contextlib.closing(open_area(config, rules, accept_new_host_key=True)) as working_area:
            working_area.check_connection()
    repo.add_area(config)
    save_rules(repo.rules_path(name), rules)
    attach(repo.git, name, branch, f"area add: {name}")
    return area_info(repo, config)


def _ssh_settings(options: AreaOptions) -> dict[str, str]:
    from vml.areas.ssh import SshTarget

    identity = _identity_file(options)
    assert options.ssh is not None
    target = SshTarget.parse(options.ssh, identity=identity, root=options.root)
    settings = {"host": target.host, "root": target.root}
    settings.update({k: str(v) for k, v in (("port", target.port), ("user", target.user), ("identity", identity)) if v})
    return settings


def _identity_file(options: AreaOptions) -> str | None:
    """--identity KEY as an absolute path, which must exist."""
    identity = os.path.abspath(options.identity) if options.identity else None
    if identity and not os.path.isfile(identity):
        raise UsageError(f"identity file {options.identity} does not exist")
    return identity


def _libvirt_area(repo: Repository, name: str, options: AreaOptions) -> AreaConfig:
    if options.directory is not None:
        raise UsageError("--libvirt and --dir do not go together: a domain's files are reached with --ssh")
    assert options.libvirt is not None
    config: AreaConfig = provisioning().vm_area_config(
        repo, name, options.libvirt, options.domain, ssh=_ssh_settings(options) if options.ssh else None,
        base=parse_base(repo.git, options.base) if options.base is not None else None, root=options.root,
        identity=_identity_file(options))
    return config


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
        tips = [repo.git.ref_target(ref) for ref in repo.git.ref_names(BRANCH_PREFIX) + repo.git.ref_names(TAG_PREFIX)]
        if head.branch is None and head.entry is not None and not force and not any(
            tip == head.entry or repo.git.is_ancestor(head.entry, tip) for tip in tips if tip is not None
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
        if is_vm(config):
            kept.insert(0, f"domain {config.settings.get('domain')} at {config.settings.get('uri')}")
        if not kept:
            with contextlib.suppress(OSError):
                os.rmdir(state_dir)
    return AreaRemoved(name, config.kind, head.entry, kept)


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


def area_preset(repo: Repository, preset: str, *, area: str | None = None, remove: bool = False) -> AreaShow:
    """Save the area with rule preset `preset` (NAME or NAME=PATH) from its next commit, or
    (`remove`) without it; the area as it is then, with its effective rules."""
    config = repo.choose_area(area)
    wanted = parse_preset(preset)
    used = [parse_preset(text) for text in area_presets(config)]
    if remove:
        kept = [found for found in used if found.name != wanted.name or ("=" in preset and found.path != wanted.path)]
        if len(kept) == len(used):
            raise UsageError(f"area {config.name} does not save with preset {preset} (its presets: {', '.join(map(str, used)) or 'none'})")
        used = kept
    elif wanted in used:
        raise UsageError(f"area {config.name} saves with preset {wanted} already")
    else:
        used.append(wanted)
    repo.set_area_setting(config.name, PRESETS_SETTING, json.dumps([str(found) for found in used]))
    return area_show(repo, config.name)


def _check_apart(location: str, repository: str) -> None:
    """An area may not hold its repository (a checkout would delete it, a commit save it)
    nor sit inside it."""
    if location == repository or repository.startswith(location.rstrip("/") + "/"):
        raise UsageError(
            f"the area {location} would contain the repository {repository}: keep the repository "
            f"outside the area (vml --repo PATH, or VML_REPO) or make the area a subdirectory"
        )
    if location.startswith(repository + "/"):
        raise UsageError(f"the area {location} is inside the repository {repository}")


def area_info(repo: Repository, config: AreaConfig) -> AreaInfo:
    head = read_head(repo.git, config.name)
    return AreaInfo(config.name, config.kind, config.location, head.branch, head.entry)


def area_list(repo: Repository) -> list[AreaInfo]:
    return [area_info(repo, config) for config in repo.areas()]
