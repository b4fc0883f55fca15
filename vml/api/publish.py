"""vml publish (and commit --public): a public entry made from a private one by streaming
its tree through the scrubber, on a lineage of its own (refs/public/NAME) whose parents are
only earlier public entries, so nothing private is reachable from it."""

from __future__ import annotations

import dataclasses
import errno
import os
import secrets
import tempfile
from dataclasses import dataclass, field

import vml
from vml.api._common import Progress, opened_area, resolve_entry
from vml.api._trust import signing_key
from vml.api.bases import area_base
from vml.areas.capture.sink import open_sink
from vml.areas.statcache import StatCache
from vml.entry import ENTRY_FILE, EntryInfo, entry_files, read_entry
from vml.environment import VARIABLES, dotfiles
from vml.errors import ConcurrentUpdate, UsageError, VmlError
from vml.objects.manifest import Totals
from vml.objects.store import ChunkStore
from vml.objects.walk import listing_loader
from vml.refs.branches import check_name
from vml.refs.heads import read_head
from vml.refs.namespace import BRANCH_PREFIX, PUBLIC_PREFIX
from vml.repo import Repository
from vml.scrub.cache import CleanCache
from vml.scrub.entryfiles import scrub_entry_files
from vml.scrub.files import FileScrubber
from vml.scrub.packages import PackageFiles
from vml.scrub.patterns import PATTERNS_DIGEST_SOURCE
from vml.scrub.report import Dangling, Finding, ScrubReport
from vml.scrub.rules import Allowlist, load_allowlist
from vml.scrub.tree import TreeScrubber, rules_for

SALT_KEY = "vml.scrubsalt"
CACHE_FILE = "scrub-cache"  # in the repository's vml directory: files the scan found nothing in (scrub/cache.py)


@dataclass(frozen=True, slots=True)
class PublishResult:
    name: str
    ref: str
    source: str | None  # the private entry published (None: a live area); never named in the public entry
    entry: str | None  # the public entry; None in a dry run, or when --strict refused
    parent: str | None
    created: bool  # False: nothing changed since the last public entry, or none was made
    dry_run: bool
    refused: bool  # --strict found what no rule covers
    files: int
    logical_bytes: int
    findings: list[Finding] = field(default_factory=list)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    dangling: list[Dangling] = field(default_factory=list)
    unreviewed: int = 0
    hints: list[str] = field(default_factory=list)
    packaged: list[str] = field(default_factory=list)  # files with a match kept: byte for byte their package's (dpkg, pip sums)
    signed: bool = False  # the public entry made was signed (--sign)


@dataclass(slots=True)
class Scrubbed:
    report: ScrubReport
    root_id: bytes
    totals: Totals
    files: dict[str, bytes]  # the public entry's files beside entry.toml
    scrubber: FileScrubber

    def message(self, text: str) -> str:
        """The entry's message, with any token or password in it replaced."""
        outcome = self.scrubber.text("message", text.encode("utf-8", "surrogateescape"))
        self.report.findings.extend(outcome.findings)
        return text if outcome.content is None else outcome.content.decode("utf-8", "surrogateescape")


def publish(repo: Repository, spec: str, *, as_name: str | None = None, message: str | None = None, dry_run: bool = False,
            strict: bool = False, rules_file: str | None = None, area: str | None = None, sign: bool = False, key: str | None = None,
            progress: Progress = None) -> PublishResult:
    """Make (or with `dry_run`, only report) the public entry of the entry `spec` on refs/public/NAME."""
    source = resolve_entry(repo, spec, area)
    info = read_entry(repo.git, source)
    refuse_private_only(info, source)
    name = as_name or _default_name(repo, spec, area)
    sign_with = signing_key(repo, key) if sign else None
    with repo.shared_lock():
        return _publish(repo, name, info, entry_files(repo.git, source), source,
                        message if message is not None else repo.git.commit(source).message,
                        dry_run=dry_run, strict=strict, rules_file=rules_file, progress=progress, sign_with=sign_with)


def commit_public(repo: Repository, message: str, *, area: str | None = None, as_name: str | None = None, dry_run: bool = False,
                  strict: bool = False, rules_file: str | None = None, sign: bool = False, key: str | None = None,
                  progress: Progress = None) -> PublishResult:
    """A public entry straight from a live area: no private entry is made and the area's
    HEAD stays. The capture goes to a scratch store beside the repository, deleted after, so
    what the scrubber removes never enters the repository's store."""
    if not message.strip():
        raise UsageError("an entry needs a message: give -m MESSAGE")
    config = repo.choose_area(area)
    name = as_name or read_head(repo.git, config.name).branch
    if name is None:
        raise UsageError(f"area {config.name} is on no branch: name the public entry with --as NAME")
    sign_with = signing_key(repo, key) if sign else None
    with opened_area(repo, config) as working_area, repo.shared_lock(), repo.area_lock(config.name), \
            tempfile.TemporaryDirectory(prefix="public-", dir=repo.temp_dir()) as scratch_dir:
        ChunkStore.create(scratch_dir)
        scratch = ChunkStore(scratch_dir).open()
        try:
            captured = working_area.capture(scratch, StatCache(), dry_run=False, progress=None)
            scratch.flush()
            extra = working_area.entry_files()  # env/dotfiles are taken from the scrubbed tree
            info = EntryInfo(manifest=captured.root_id.hex(), area=config.name, area_kind=config.kind, location="", host="",
                             capture_method=working_area.capture_method, vml_version=vml.__version__, nodes=0, files=0,
                             logical_bytes=0, added_bytes=0, base=area_base(repo, config),
                             rules=(list(working_area.rules.include), list(working_area.rules.exclude)))
            return _publish(repo, name, info, extra, None, message, dry_run=dry_run, strict=strict, rules_file=rules_file,
                            progress=progress, source_store=scratch, sign_with=sign_with)
        finally:
            scratch.close()


def refuse_private_only(info: EntryInfo, source: str) -> None:
    if info.memory is not None:
        raise UsageError(f"entry {source[:12]} holds a running domain's memory, which is never public: a memory image holds "
                         f"whatever the guest had in RAM (keys, tickets, typed passwords); commit without --memory and publish that")
    if info.kind == "base":
        raise UsageError(f"{source[:12]} is a base image's own entry: bases are shared as they are ('vml push' sends them)")


def _publish(repo: Repository, name: str, info: EntryInfo, extra: dict[str, bytes], source: str | None, message: str, *,
             dry_run: bool, strict: bool, rules_file: str | None, progress: Progress, source_store: ChunkStore | None = None,
             sign_with: str | None = None) -> PublishResult:
    check_name(repo.git, "branch", name)
    ref = PUBLIC_PREFIX + name
    parent = repo.git.ref_target(ref)
    if parent is not None and read_entry(repo.git, parent).scrub is None:
        raise VmlError(f"{ref} names entry {parent[:12]}, which is not a public entry: it was not made by vml publish")
    try:
        scrubbed = scrub(repo, info, extra, rules_file=rules_file, dry_run=dry_run or strict, progress=progress, source_store=source_store)
    except BaseException:
        repo.store.abandon()  # what a failed scrub wrote goes with it
        raise
    report = scrubbed.report

    def result(entry: str | None, created: bool, refused: bool = False) -> PublishResult:
        return PublishResult(name=name, ref=ref, source=source, entry=entry, parent=parent, created=created, dry_run=dry_run,
                             signed=created and sign_with is not None,
                             refused=refused, files=scrubbed.totals.files, logical_bytes=scrubbed.totals.bytes,
                             findings=report.findings, categories=report.categories(), dangling=report.dangling,
                             unreviewed=len(report.unreviewed()), hints=report.hints(), packaged=scrubbed.scrubber.pristine)

    if dry_run:
        return result(None, False)
    if strict and report.unreviewed():
        return result(None, False, refused=True)
    try:
        if strict:  # the dry scan found nothing unreviewed: now the tree is written
            scrubbed = scrub(repo, info, extra, rules_file=rules_file, dry_run=False, progress=progress, source_store=source_store)
            report = scrubbed.report
        repo.store.flush()  # packs, then their index: durable before a commit names them
    except OSError as error:
        repo.store.abandon()
        if error.errno != errno.ENOSPC:
            raise
        raise VmlError("the disk of the repository is full: no public entry was made") from None
    except BaseException:
        repo.store.abandon()
        raise
    public = _public_info(info, scrubbed)
    entry = repo.git.create_commit({ENTRY_FILE: public.to_toml(), **scrubbed.files}, scrubbed.message(message), [parent] if parent else [],
                                   sign_with=sign_with)
    if parent is not None and repo.git.tree_id(entry) == repo.git.tree_id(parent):
        return result(parent, False)  # the commit just made stays unreferenced: gc prunes it
    try:
        repo.git.update_ref(ref, entry, parent, f"publish{f': {source}' if source else ' (from an area)'}")
    except ConcurrentUpdate as error:
        raise VmlError(f"public entry {entry} was made but {ref} moved meanwhile ({error}); publish again") from None
    return result(entry, True)


def scrub(repo: Repository, info: EntryInfo, extra: dict[str, bytes], *, rules_file: str | None, dry_run: bool, progress: Progress,
          source_store: ChunkStore | None = None) -> Scrubbed:
    """The entry's tree (in `source_store`, default the repository's) and files through the
    scrubber; the new tree stored in the repository's store unless `dry_run`."""
    source = source_store or repo.store
    load = listing_loader(source)
    root = bytes.fromhex(info.manifest)
    allowed, salt = load_allowlist(rules_file), scrub_salt(repo)
    rules = rules_for(load, source, root, rules_file)
    cache = CleanCache(os.path.join(repo.vml_dir, CACHE_FILE), b"\0".join((
        vml.__version__.encode(), repr(rules.rules).encode(), repr(rules.homes).encode(), repr(allowed).encode(), salt, PATTERNS_DIGEST_SOURCE)))
    files = FileScrubber(rules, source, PackageFiles(load, source, root), Allowlist(allowed, salt), cache)
    sink = open_sink(repo.store, dry_run)
    tree = TreeScrubber(load, sink, files, progress, copy_from=source if source is not repo.store and not dry_run else None).scrub(root)
    cache.save()
    scrubbed = scrub_entry_files(extra, files, tree.report)
    if VARIABLES in extra and not dry_run:
        scrubbed.update(dotfiles(repo.store, listing_loader(repo.store), tree.root_id))
    return Scrubbed(tree.report, tree.root_id, tree.totals, scrubbed, files)


def scrub_salt(repo: Repository) -> bytes:
    """This repository's key for the fingerprints of allowlisted findings: made once, kept
    in its git config (never pushed)."""
    salt = repo.git.config_get(SALT_KEY)
    if salt is None:
        salt = secrets.token_hex(16)
        repo.git.config_set(SALT_KEY, salt)
    return bytes.fromhex(salt)


def _public_info(info: EntryInfo, scrubbed: Scrubbed) -> EntryInfo:
    """The private entry's description with what is the publisher's own left out: where the
    area was, which host, what was skipped or changed while reading."""
    return dataclasses.replace(info, manifest=scrubbed.root_id.hex(), location="", host="",
                               nodes=scrubbed.totals.nodes, files=scrubbed.totals.files, logical_bytes=scrubbed.totals.bytes,
                               added_bytes=0, skipped=[], changed_while_reading=[], memory=None, memory_disks=[],
                               vml_version=vml.__version__, scrub=scrubbed.report.to_entry())


def _default_name(repo: Repository, spec: str, area: str | None) -> str:
    if repo.git.ref_target(BRANCH_PREFIX + spec) is not None:
        return spec
    try:
        head = read_head(repo.git, repo.choose_area(area).name)
    except VmlError:
        head = None
    if head is not None and head.branch is not None:
        return head.branch
    raise UsageError(f"name the public entry: vml publish {spec} --as NAME (it goes on refs/public/NAME)")
