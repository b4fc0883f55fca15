"""The sections of the repository's git config file that vml owns: `vml.*` (the format),
`vml-area.NAME.*` (each working area's kind, location and settings), `remote.NAME.url`
(remotes, as git names them), `vml-unborn.NAME.branch` (the branch an area's first
commit starts) and `vml-catalog.NAME.*` (where base NAME's versions are published). Everything else reads and writes them through here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from vml.errors import UnknownArea, UsageError
from vml.refs.git import GitDag

REPOSITORY_SECTION = "vml"
AREA_SECTION = "vml-area"
REMOTE_SECTION = "remote"
UNBORN_SECTION = "vml-unborn"
CATALOG_SECTION = "vml-catalog"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_area_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name or name.endswith(".lock"):
        raise UsageError(f"invalid area name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


@dataclass(frozen=True, slots=True)
class AreaConfig:
    name: str
    kind: str  # dir, ssh or libvirt
    location: str  # for people: a path, or ssh://user@host:port/root
    settings: dict[str, str] = field(default_factory=dict)  # per kind: host, port, user, identity, root, uri, domain


def write_repository_settings(git: GitDag, *, bare: bool) -> None:
    git.config_set(f"{REPOSITORY_SECTION}.format", "1")
    git.config_set(f"{REPOSITORY_SECTION}.bare", "true" if bare else "false")


# -- areas


def area_names(git: GitDag) -> list[str]:
    names = set()
    for key, _value in git.config_items(AREA_SECTION + "."):
        names.add(key[len(AREA_SECTION) + 1 :].rsplit(".", 1)[0])
    return sorted(names)


def read_area(git: GitDag, name: str) -> AreaConfig:
    kind = git.config_get(f"{AREA_SECTION}.{name}.kind")
    if kind is None:
        known = ", ".join(area_names(git)) or "none"
        raise UnknownArea(f"no area named {name!r} (areas: {known})")
    prefix = f"{AREA_SECTION}.{name}."
    settings = {
        key[len(prefix) :]: value
        for key, value in git.config_items(prefix)
        if key[len(prefix) :] not in ("kind", "location")
    }
    return AreaConfig(name, kind, git.config_get(prefix + "location") or "", settings)


def write_area(git: GitDag, config: AreaConfig) -> None:
    check_area_name(config.name)
    if git.config_get(f"{AREA_SECTION}.{config.name}.kind") is not None:
        raise UsageError(f"area {config.name!r} exists already")
    git.config_set(f"{AREA_SECTION}.{config.name}.kind", config.kind)
    git.config_set(f"{AREA_SECTION}.{config.name}.location", config.location)
    for key, value in config.settings.items():
        git.config_set(f"{AREA_SECTION}.{config.name}.{key}", value)


SHARES_SETTING = "shares"  # a libvirt area's: the guest paths of its shared folders, as JSON (vml/api/shares.py)


def shared_paths(config: AreaConfig) -> list[str]:
    """The guest paths of the area's shared folders: host data its captures and checkouts
    leave alone."""
    try:
        paths = json.loads(config.settings.get(SHARES_SETTING) or "[]")
    except ValueError:
        return []
    return [path for path in paths if isinstance(path, str)] if isinstance(paths, list) else []


PRESETS_SETTING = "presets"  # an area's rule presets, as JSON: ["cvmfs-cache", "cvmfs-cache=/scratch/cvmfs"] (vml/areas/presets.py)


def area_presets(config: AreaConfig) -> list[str]:
    """The rule presets the area saves with (NAME or NAME=PATH each)."""
    try:
        found = json.loads(config.settings.get(PRESETS_SETTING) or "[]")
    except ValueError:
        return []
    return [text for text in found if isinstance(text, str)] if isinstance(found, list) else []


def set_area_setting(git: GitDag, name: str, key: str, value: str) -> AreaConfig:
    """Change one setting of an existing area (a new VM's forwarded port); returns the area."""
    read_area(git, name)  # it must exist
    git.config_set(f"{AREA_SECTION}.{name}.{key}", value)
    return read_area(git, name)


def delete_area(git: GitDag, name: str) -> None:
    for key, _value in list(git.config_items(f"{AREA_SECTION}.{name}.")):
        git.config_delete(key)


# -- remotes


def remote_urls(git: GitDag) -> dict[str, str]:
    """Every remote's name and URL, sorted by name."""
    found = {}
    for key, value in git.config_items(f"{REMOTE_SECTION}."):
        if key.endswith(".url"):
            found[key[len(REMOTE_SECTION) + 1 : -len(".url")]] = value
    return dict(sorted(found.items()))


def remote_url(git: GitDag, name: str) -> str:
    url = git.config_get(f"{REMOTE_SECTION}.{name}.url")
    if url is None:
        known = ", ".join(remote_urls(git)) or "none"
        raise UsageError(f"no remote named {name!r} (remotes: {known}); add one with 'vml remote add {name} URL'")
    return url


def write_remote(git: GitDag, name: str, url: str) -> None:
    if git.config_get(f"{REMOTE_SECTION}.{name}.url") is not None:
        raise UsageError(f"a remote named {name!r} exists already (vml remote remove {name})")
    git.config_set(f"{REMOTE_SECTION}.{name}.url", url)


def delete_remote(git: GitDag, name: str) -> None:
    git.config_delete(f"{REMOTE_SECTION}.{name}.url")


# -- the branch an area on an unborn branch will start


def _unborn_key(area: str) -> str:
    return f"{UNBORN_SECTION}.{area}.branch"


def unborn_branch(git: GitDag, area: str) -> str | None:
    return git.config_get(_unborn_key(area))


def set_unborn_branch(git: GitDag, area: str, branch: str) -> None:
    git.config_set(_unborn_key(area), branch)


def clear_unborn_branch(git: GitDag, area: str) -> None:
    git.config_delete(_unborn_key(area))


def unborn_branches(git: GitDag) -> dict[str, str]:
    """Area name -> the unborn branch it is on."""
    prefix = UNBORN_SECTION + "."
    return {key[len(prefix) : -len(".branch")]: value for key, value in git.config_items(prefix) if key.endswith(".branch")}


# -- catalogs of base images (vml/catalog.py)


@dataclass(frozen=True, slots=True)
class CatalogConfig:
    name: str  # the base it publishes
    url: str
    auto_fetch: bool  # a checkout that lacks one of its versions fetches it without asking


def catalogs(git: GitDag) -> list[CatalogConfig]:
    prefix = CATALOG_SECTION + "."
    names = sorted({key[len(prefix) : -len(".url")] for key, _value in git.config_items(prefix) if key.endswith(".url")})
    return [found for name in names if (found := catalog(git, name)) is not None]


def catalog(git: GitDag, name: str) -> CatalogConfig | None:
    url = git.config_get(f"{CATALOG_SECTION}.{name}.url")
    if url is None:
        return None
    return CatalogConfig(name, url, git.config_get(f"{CATALOG_SECTION}.{name}.auto-fetch") == "true")


def write_catalog(git: GitDag, config: CatalogConfig) -> None:
    git.config_set(f"{CATALOG_SECTION}.{config.name}.url", config.url)
    git.config_set(f"{CATALOG_SECTION}.{config.name}.auto-fetch", "true" if config.auto_fetch else "false")


def delete_catalog(git: GitDag, name: str) -> None:
    for key, _value in list(git.config_items(f"{CATALOG_SECTION}.{name}.")):
        git.config_delete(key)
