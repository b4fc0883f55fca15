"""Rule presets: what a guest holds that its default rules leave out, and that a user may
want in an entry on purpose.

`cvmfs-cache`: the cache of the CernVM File System (seed 004). CVMFS downloads the files of
the experiment software one by one, on demand, and keeps them in its cache
(CVMFS_CACHE_BASE, /var/lib/cvmfs by default). A guest's default rules leave the cache out:
it can always be fetched again, and most entries are better without gigabytes of it
(seed 001). An area with the preset saves it, so that a colleague's checkout works at
once, and offline, instead of downloading ~2 GB of small files one by one; the entry says
so (`vml show`). Files CVMFS is still writing (txn/) or has set aside as damaged
(quarantaine/) stay out.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from vml.areas.rules import Rules, literal_pattern
from vml.errors import UsageError


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    what: str  # for people: "the CVMFS cache"
    default_path: str
    inside_excludes: tuple[str, ...]  # patterns below the path that stay out


PRESETS = {preset.name: preset for preset in (
    Preset("cvmfs-cache", "the CVMFS cache", "/var/lib/cvmfs", ("txn/", "quarantaine/")),
)}


@dataclass(frozen=True, slots=True)
class UsedPreset:
    name: str
    path: str  # absolute, in the area's root

    def __str__(self) -> str:
        return self.name if self.path == PRESETS[self.name].default_path else f"{self.name}={self.path}"

    @property
    def what(self) -> str:
        return PRESETS[self.name].what


def parse_preset(text: str) -> UsedPreset:
    """NAME or NAME=PATH, as users type it."""
    name, _, path = text.partition("=")
    preset = PRESETS.get(name)
    if preset is None:
        raise UsageError(f"no rule preset {name!r} (presets: {', '.join(PRESETS)})")
    path = path or preset.default_path
    if not path.startswith("/") or posixpath.normpath(path) in ("/", ".") or "\n" in path:
        raise UsageError(f"{text}: the preset's path is an absolute directory below the root, e.g. {preset.name}={preset.default_path}")
    return UsedPreset(name, posixpath.normpath(path))


def with_presets(rules: Rules, used: list[UsedPreset]) -> Rules:
    """`rules` that save what each preset names (its path is below the area's top: for a
    guest, its root), less the files inside it that stay out."""
    include, exclude = list(rules.include), list(rules.exclude)
    for preset in used:
        relative = preset.path.lstrip("/")
        pattern = literal_pattern(relative.encode())
        exclude = [p for p in exclude if p.rstrip("/") != pattern and p.rstrip("/") != "/" + relative]
        if not _included(rules, relative):
            include.append(pattern + "/")
        exclude += [f"{pattern}/**/{inside}" for inside in PRESETS[preset.name].inside_excludes]
    return Rules(tuple(include), tuple(dict.fromkeys(exclude)))


def _included(rules: Rules, relative: str) -> bool:
    """Whether an include of `rules` covers the path already (a prefix of it, or everything)."""
    return any(("/" + relative + "/").startswith(pattern.rstrip("/") + "/") for pattern in rules.include)
