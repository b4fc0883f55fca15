"""entry.toml: the human-readable description of an entry, kept in its git commit's tree,
and reading it (and the files beside it) from an entry's commit."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

import tomli_w

from vml.environment import COMPARED as ENV_COMPARED
from vml.errors import CorruptObject, UnknownEntry, UsageError
from vml.objects.ids import ObjectId
from vml.pathnames import unquote_path
from vml.refs.bases import BaseName, list_bases
from vml.refs.git import GitDag

FORMAT = 1
ENTRY_FILE = "entry.toml"
DOMAIN_FILE = "vm/domain.xml"  # a libvirt area's domain definition, beside entry.toml


@dataclass(frozen=True, slots=True)
class BaseRef:
    """The base image an entry sits on (or, in a base's own entry, the base itself)."""

    name: str
    version: str
    digest: str  # blake3:HEX of an image file, or tree:HEX (the root listing id) of a tree

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(slots=True)
class EntryInfo:
    manifest: str  # hex id of the root listing in the chunk store
    area: str
    area_kind: str
    location: str
    host: str
    capture_method: str
    vml_version: str
    nodes: int
    files: int
    logical_bytes: int
    added_bytes: int
    skipped: list[str] = field(default_factory=list)
    changed_while_reading: list[str] = field(default_factory=list)
    kind: str = "entry"  # "base" for a base image's own entry
    base: BaseRef | None = None
    image: str | None = None  # a base made from an image file: the file's name in the tree
    boot: dict[str, str] | None = None  # a bootable image's kernel and initrd (names in the tree) and cmdline
    memory: str | None = None  # hex id of the tree holding a libvirt memory image and its disks
    memory_disks: list[str] = field(default_factory=list)  # where each saved disk lives, in the tree's order
    rules: tuple[list[str], list[str]] | None = None  # the area's (include, exclude) rules when it was saved
    presets: list[str] = field(default_factory=list)  # the rule presets among them (vml/areas/presets.py): NAME or NAME=PATH
    scrub: dict | None = None  # a public entry's scrub report (vml/scrub/report.py: ScrubReport.to_entry); None: private

    def required_base(self) -> BaseRef:
        """The base of an entry that must have one (a base's own entry, or one found by its base)."""
        if self.base is None:
            raise CorruptObject(f"damaged {ENTRY_FILE}: it names no base image where one is needed")
        return self.base

    def left_out(self) -> list[bytes]:
        """The paths (relative) a public entry's scrubber dropped: unknown, not absent; a
        checkout keeps an area's own and a status does not call them added."""
        return [unquote_path(path).lstrip(b"/") for path in (self.scrub or {}).get("dropped", [])]

    def manifests(self) -> list[ObjectId]:
        """Every tree of chunks the entry needs: its files, and its memory and disks if saved."""
        roots = [ObjectId.parse(self.manifest)]
        if self.memory is not None:
            roots.append(ObjectId.parse(self.memory))
        return roots

    def to_toml(self) -> bytes:
        document = {
            "format": FORMAT,
            "area": {"name": self.area, "kind": self.area_kind, "location": self.location, "host": self.host},
            "capture": {
                "method": self.capture_method,
                "vml_version": self.vml_version,
                "skipped": self.skipped,
                "changed_while_reading": self.changed_while_reading,
            },
            "files": {
                "manifest": self.manifest,
                "nodes": self.nodes,
                "files": self.files,
                "logical_bytes": self.logical_bytes,
                "added_bytes": self.added_bytes,
            },
        }
        if self.rules is not None:
            document["rules"] = {"include": list(self.rules[0]), "exclude": list(self.rules[1])}
            if self.presets:
                document["rules"]["presets"] = list(self.presets)
        if self.memory is not None:
            document["memory"] = {"manifest": self.memory, "disks": self.memory_disks, "public": False}
        if self.kind != "entry":
            document["kind"] = self.kind
        if self.scrub is not None:
            document["scrub"] = self.scrub
        if self.base is not None:
            document["base"] = {"name": self.base.name, "version": self.base.version, "digest": self.base.digest}
            if self.image is not None:
                document["base"]["image"] = self.image
            if self.boot:
                document["base"]["boot"] = dict(self.boot)
        return tomli_w.dumps(document).encode()

    @classmethod
    def from_toml(cls, data: bytes) -> EntryInfo:
        try:
            document = tomllib.loads(data.decode())
            if document.get("format") != FORMAT:
                raise ValueError(f"unknown entry format {document.get('format')}")
            area, capture, files = document["area"], document["capture"], document["files"]
            base = document.get("base")
            memory = document.get("memory")
            rules = document.get("rules")
            return cls(
                manifest=files["manifest"],
                area=area["name"],
                area_kind=area["kind"],
                location=area["location"],
                host=area["host"],
                capture_method=capture["method"],
                vml_version=capture["vml_version"],
                nodes=files["nodes"],
                files=files["files"],
                logical_bytes=files["logical_bytes"],
                added_bytes=files["added_bytes"],
                skipped=list(capture.get("skipped", [])),
                changed_while_reading=list(capture.get("changed_while_reading", [])),
                kind=document.get("kind", "entry"),
                base=BaseRef(str(base["name"]), str(base["version"]), str(base["digest"])) if base else None,
                image=base.get("image") if base else None,
                boot={str(k): str(v) for k, v in base["boot"].items()} if base and base.get("boot") else None,
                memory=memory["manifest"] if memory else None,
                memory_disks=list(memory.get("disks", [])) if memory else [],
                rules=([str(p) for p in rules["include"]], [str(p) for p in rules["exclude"]]) if rules else None,
                presets=[str(p) for p in rules.get("presets", [])] if rules else [],
                scrub=_scrub_table(document.get("scrub")),
            )
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as error:
            raise CorruptObject(f"damaged {ENTRY_FILE}: {error}") from None


MAX_LEFT_OUT = 100_000  # more paths than any public entry drops: a hostile entry.toml


def _scrub_table(table: object) -> dict | None:
    """A public entry's [scrub] table, its lists checked (it may come from a stranger)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError("[scrub] is not a table")
    for key in ("hints", "dropped", "changed"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value) or len(value) > MAX_LEFT_OUT:
            raise ValueError(f"[scrub] {key} is not a list of at most {MAX_LEFT_OUT:,} strings")
    return dict(table)


def read_entry(git: GitDag, entry_id: str) -> EntryInfo:
    """The entry.toml of commit `entry_id`; UnknownEntry if the commit is not a vml entry."""
    data = git.read_file(entry_id, ENTRY_FILE)
    if data is None:
        raise UnknownEntry(f"{entry_id[:12]} is a git commit but not a vml entry (no {ENTRY_FILE})")
    return EntryInfo.from_toml(data)


def entry_root(git: GitDag, entry_id: str) -> ObjectId:
    """The id of the root listing of the entry's files."""
    return ObjectId.parse(read_entry(git, entry_id).manifest)


def entry_files(git: GitDag, entry_id: str) -> dict[str, bytes]:
    """The files beside entry.toml that a working area compares and puts back: the domain's
    definition, the environment variables and the history."""
    found = {}
    for path in (DOMAIN_FILE, *ENV_COMPARED):
        data = git.read_file(entry_id, path)
        if data is not None:
            found[path] = data
    return found


def same_base_image(git: GitDag, one: str, other: str) -> bool:
    """Whether two base entries (of one name and version, from two repositories) hold the
    same image: the same digest."""
    return one == other or read_entry(git, one).required_base().digest == read_entry(git, other).required_base().digest


def base_entry(git: GitDag, base: BaseName) -> tuple[str, EntryInfo]:
    """The entry a base's ref names, and its entry.toml; a UsageError if there is no such base."""
    entry_id = git.ref_target(base.ref)
    if entry_id is None:
        known = ", ".join(str(b) for b, _ in list_bases(git)) or "none"
        raise UsageError(f"no base {base} in this repository (bases: {known}); add it with 'vml base add {base.name} {base.version} --image FILE'")
    return entry_id, read_entry(git, entry_id)
