"""Include and exclude rules of a working area, in gitignore syntax (pathspec's one home).

A path is saved when it, or a directory above it, matches an include pattern, and no
exclude pattern matches it (exclude patterns follow gitignore exactly: last match wins,
`!` re-includes, a trailing `/` matches directories only). Directories on the way to an
included path (`usr` for `/usr/local`) are kept with their own metadata but list only what
the rules admit; a checkout deletes nothing outside the included paths.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from vml.durable import write_atomically
from vml.errors import UsageError

if TYPE_CHECKING:
    import pathspec

EVERYTHING = "/"
GUEST_INCLUDE = ("/home", "/root", "/etc", "/usr/local", "/opt", "/var/lib")
# The profile script a checkout writes from the entry's env/variables is derived, never saved;
# the CVMFS cache can be downloaded again, and is saved only on purpose (vml/areas/presets.py).
GUEST_EXCLUDE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/cache", "/var/tmp", "/swapfile", "/swap.img", "*.swp", "*.swap",
                 "/etc/profile.d/vml-environment.sh", "/var/lib/cvmfs/")
# Credentials that expire and are useless after a restore: left out of every entry, private
# ones too (grid proxies, Kerberos ticket caches and the KCM database; agent sockets and
# bearer tokens live under /tmp and /run, which guests exclude anyway, and sockets are never saved).
EPHEMERAL = ("x509up_u*", "krb5cc_*", "/var/lib/sss/secrets/")
_GLOB = re.compile(r"[*?\[\\!]")
PATHSPEC_BACKEND = "simple"


class Scope(Enum):
    OUT = 0  # not saved, never touched by a checkout
    ON_THE_WAY = 1  # a directory above an included path: its metadata, and only admitted children
    IN = 2  # inside an included path (still subject to excludes below it)


@dataclass(frozen=True)
class Rules:
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        for pattern in self.include + self.exclude:
            if not pattern.strip() or "\n" in pattern or pattern.startswith("#"):
                raise UsageError(f"invalid rule {pattern!r}: one gitignore pattern per rule")
        object.__setattr__(self, "_prefixes", tuple(_literal_prefix(p) for p in self.include))
        object.__setattr__(self, "_simple_excludes", _simple_patterns(self.exclude))
        object.__setattr__(self, "_everything", EVERYTHING in self.include)
        object.__setattr__(self, "_specs", None)
        # Rules with wildcards are compiled now, to refuse a bad one at once; a directory's
        # default (everything, less a few simple excludes) never needs pathspec, nor its
        # start-up cost (14 ms of every commit).
        if self._simple_excludes is None or any(_GLOB.search(pattern) for pattern in self.include):
            self._compiled()

    def _compiled(self) -> tuple[pathspec.GitIgnoreSpec, pathspec.GitIgnoreSpec]:
        """(included, excluded) as pathspec matches them."""
        if self._specs is None:
            import pathspec

            try:
                # pathspec's regex backend: its Hyperscan one cannot take a path that is not UTF-8
                # (its text holds lone surrogates) and raised on one; a few rules gain little from it.
                specs = (pathspec.GitIgnoreSpec.from_lines([p for p in self.include if p != EVERYTHING], backend=PATHSPEC_BACKEND),
                         pathspec.GitIgnoreSpec.from_lines(self.exclude, backend=PATHSPEC_BACKEND))
            except (ValueError, TypeError) as error:
                raise UsageError(f"invalid rule: {error}") from None
            object.__setattr__(self, "_specs", specs)
        return self._specs

    @property
    def everything(self) -> bool:
        """True when the rules admit every path (the fast path of a plain directory area)."""
        return EVERYTHING in self.include and not self.exclude

    def scope(self, rel: bytes, is_dir: bool, parent: Scope) -> Scope:
        """Where `rel` (relative, '/'-separated) stands, given its parent directory's scope.
        (Asked of every path a capture meets: inside an included tree, with simple excludes,
        it never decodes the path.)"""
        if self.exclude and self._is_excluded(rel, is_dir):
            return Scope.OUT
        if parent is Scope.IN or self._everything:
            return Scope.IN
        text = os.fsdecode(rel)
        if self._compiled()[0].match_file(text):
            return Scope.IN
        if is_dir and self._on_the_way(text):
            return Scope.ON_THE_WAY
        return Scope.OUT

    def _is_excluded(self, rel: bytes, is_dir: bool) -> bool:
        """Whether an exclude pattern matches `rel`, whose parent directories matched none
        (scope() is asked top-down: nothing below an excluded directory is ever asked)."""
        simple = self._simple_excludes
        if simple is None:
            text = os.fsdecode(rel)
            return self._compiled()[1].match_file(text + "/" if is_dir else text)
        # The common patterns (/proc, /var/cache/, *.swp) on the path's bytes, without
        # pathspec's regexes: the same answers (tests check it), a fraction of the time on
        # a guest's 100,000 paths.
        anchored, directories, suffixes, prefixes = simple
        name = rel.rpartition(b"/")[2]
        return rel in anchored or (is_dir and rel in directories) or name.endswith(suffixes) or name.startswith(prefixes)

    def admits(self, rel: bytes, is_dir: bool) -> bool:
        """Whether a path (relative, '/'-separated) is within these rules, asked from the top."""
        scope = self.root_scope()
        parts = rel.split(b"/")
        for depth in range(1, len(parts) + 1):
            scope = self.scope(b"/".join(parts[:depth]), is_dir or depth < len(parts), scope)
            if scope is Scope.OUT:
                return False
        return True

    def root_scope(self) -> Scope:
        return Scope.IN if EVERYTHING in self.include else Scope.ON_THE_WAY

    def _on_the_way(self, text: str) -> bool:
        for prefix in self._prefixes:
            if prefix is None or prefix.startswith(text + "/") or text.startswith(prefix + "/") or text == prefix:
                return True
        return False

    def walk_roots(self) -> list[str] | None:
        """The literal paths an included tree starts from, or None if a pattern with wildcards
        (or no leading '/') means the whole tree must be walked and filtered."""
        if any(prefix is None for prefix in self._prefixes):
            return None
        roots = []
        for pattern in self.include:
            prefix = _literal_prefix(pattern)
            if prefix == "" or _GLOB.search(pattern.lstrip("/").rstrip("/")):
                return None
            roots.append(prefix)
        return sorted(set(roots))

    # -- the rules file

    def to_text(self) -> str:
        lines = ["# vml rules: gitignore patterns, relative to the area's top ('/' is the top itself)"]
        lines += [f"include {p}" for p in self.include]
        lines += [f"exclude {p}" for p in self.exclude]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str) -> Rules:
        include, exclude = [], []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            verb, _, pattern = line.partition(" ")
            if verb not in ("include", "exclude") or not pattern.strip():
                raise UsageError(f"{source}:{number}: expected 'include PATTERN' or 'exclude PATTERN', got {line!r}")
            (include if verb == "include" else exclude).append(pattern.strip())
        return cls(tuple(include), tuple(exclude))


def _literal_prefix(pattern: str) -> str | None:
    """The directory part of an anchored include pattern before any wildcard ('' for the top);
    None for a pattern that may match at any depth."""
    if pattern == EVERYTHING:
        return ""
    body = pattern.rstrip("/")
    if not body.startswith("/") and "/" not in body:
        return None  # gitignore: a pattern without a slash matches at any depth
    parts = []
    for part in body.lstrip("/").split("/"):
        if _GLOB.search(part) or part == "**":
            break
        parts.append(part)
    return "/".join(parts)


def _simple_patterns(patterns: tuple[str, ...]) -> tuple[frozenset[bytes], frozenset[bytes], tuple[bytes, ...], tuple[bytes, ...]] | None:
    """Exclude patterns as (anchored paths, anchored directories, name suffixes, name
    prefixes), in bytes, when every one is that simple and none negates (so their order does
    not matter); else None. (A path's text is its bytes decoded one to one, so a literal
    matches the text where its bytes match the path's.)"""
    anchored, directories, suffixes, prefixes = [], [], [], []
    for pattern in patterns:
        if pattern.startswith("/") and not _GLOB.search(pattern) and pattern.strip("/"):
            (directories if pattern.endswith("/") else anchored).append(os.fsencode(pattern.strip("/")))
        elif pattern.startswith("*") and "/" not in pattern and not _GLOB.search(pattern[1:]) and len(pattern) > 1:
            suffixes.append(os.fsencode(pattern[1:]))
        elif pattern.endswith("*") and "/" not in pattern and not _GLOB.search(pattern[:-1]) and len(pattern) > 1:
            prefixes.append(os.fsencode(pattern[:-1]))
        else:
            return None
    return frozenset(anchored), frozenset(directories), tuple(suffixes), tuple(prefixes)


def may_delete(rel: bytes, is_dir: bool, entry_rules: Rules | None, area_rules: Rules | None = None,
               parent_scope: Scope = Scope.IN) -> bool:
    """THE deletion rule of a checkout: a path the entry lacks is deleted only where both the
    area's rules (asked below a directory of `parent_scope`) and the rules the entry was saved
    under cover it; what either leaves out is not the entry's to delete. (A guest's restore
    passes no area rules: the tree it compares with was captured under them.)"""
    if area_rules is not None and area_rules.scope(rel, is_dir, parent_scope) is Scope.OUT:
        return False
    return entry_rules is None or entry_rules.admits(rel, is_dir)


def literal_pattern(path: bytes) -> str:
    """The gitignore pattern that matches exactly `path` (relative, '/'-separated) and nothing else."""
    return "/" + re.sub(r"([\\*?\[\]!# ])", r"\\\1", os.fsdecode(path))


def without_ephemeral(rules: Rules) -> Rules:
    """The rules a capture runs under: the area's, with the expiring credentials left out."""
    missing = tuple(pattern for pattern in EPHEMERAL if pattern not in rules.exclude)
    return Rules(rules.include, rules.exclude + missing) if missing else rules


def everything() -> Rules:
    """What a plain directory keeps by default: all of it."""
    return Rules((EVERYTHING,))


def guest_rules() -> Rules:
    """What a guest keeps by default: what a user changes, not the system."""
    return Rules(GUEST_INCLUDE, GUEST_EXCLUDE)


def load_rules(path: str, default: Rules) -> Rules:
    """The rules saved at `path`, or `default` (the kind's) if none were saved."""
    try:
        with open(path, encoding="utf-8") as rules_file:
            return Rules.from_text(rules_file.read(), path)
    except FileNotFoundError:
        return default


def save_rules(path: str, rules: Rules) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(path, rules.to_text().encode("utf-8"))
