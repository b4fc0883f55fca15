"""Base images on their own refs: `refs/vml/bases/NAME/VERSION` points at the base's entry."""

from __future__ import annotations

from dataclasses import dataclass

from vml.errors import UsageError
from vml.refs.git import GitDag
from vml.refs.namespace import BASE_PREFIX


@dataclass(frozen=True, slots=True)
class BaseName:
    name: str
    version: str

    @classmethod
    def of_ref(cls, ref: str) -> BaseName:
        """The base a ref refs/vml/bases/NAME/VERSION names."""
        name, _, version = ref[len(BASE_PREFIX) :].partition("/")
        return cls(name, version)

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
        target = git.ref_target(ref)
        if target is not None:
            found.append((BaseName.of_ref(ref), target))
    return found
