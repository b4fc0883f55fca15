"""Base images on their own refs: `refs/vml/bases/NAME/VERSION` points at the base's entry."""

from __future__ import annotations

from dataclasses import dataclass

from vml.errors import UsageError
from vml.refs.git import GitDag
from vml.refs.namespace import BASE_PREFIX  # also imported from here by vml/api.py


@dataclass(frozen=True, slots=True)
class BaseName:
    name: str
    version: str

    @property
    def ref(self) -> str:
        return f"{BASE_PREFIX}{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def base_name(git: GitDag, name: str, version: str) -> BaseName:
    for part, what in ((name, "name"), (version, "version")):
        if not part or "/" in part or part.startswith("-") or not git.is_valid_ref_name(f"{BASE_PREFIX}{part}/x"):
            raise UsageError(f"{part!r} is not a valid base {what} (git's ref-name rules, and no '/')")
    return BaseName(name, version)


def parse_base(git: GitDag, text: str) -> BaseName:
    """NAME:VERSION, as users type it."""
    name, colon, version = text.rpartition(":")
    if not colon:
        raise UsageError(f"give a base as NAME:VERSION, not {text!r}")
    return base_name(git, name, version)


def list_bases(git: GitDag) -> list[tuple[BaseName, str]]:
    found = []
    for ref in git.ref_names(BASE_PREFIX):
        name, _, version = ref[len(BASE_PREFIX) :].partition("/")
        target = git.ref_target(ref)
        if target is not None:
            found.append((BaseName(name, version), target))
    return found
