"""vml export and vml import: one entry (and what it needs) as a bundle file, and back."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from vml.api._common import entry_info, resolve_entry
from vml.api._trust import check_entry
from vml.api.bases import missing_base
from vml.entry import base_entry, same_base_image
from vml.errors import BaseMissing, UsageError
from vml.exchange.bundle import DIFFERENTIAL, FULL, INCREMENTAL, SINCE, BundleInfo, read_bundle, write_bundle
from vml.pathnames import quote_path
from vml.refs.bases import BaseName
from vml.refs.branches import check_name
from vml.refs.heads import areas_on_branch
from vml.refs.namespace import BRANCH_PREFIX, REFS_PREFIX, TAG_PREFIX, short_name
from vml.refs.updates import REJECTED, UP_TO_DATE, classify
from vml.repo import Repository


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
        ref = next((prefix + spec for prefix in (BRANCH_PREFIX, TAG_PREFIX, REFS_PREFIX) if repo.git.ref_target(prefix + spec) == entry
                    and (prefix != REFS_PREFIX or spec.startswith("public/"))), None)
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
            _base_commit, base_info = base_entry(repo.git, BaseName(base.name, base.version))
            if base_info.required_base().digest != base.digest:
                raise UsageError(f"base {base} here is another image than the one entry {entry[:12]} was saved on (digests differ)")
            base_roots = base_info.manifests()
        carried = {}
        entry_base = entry_info(repo, entry).base
        if kind == FULL and entry_base is not None:  # a full bundle needs nothing: its base goes too
            base_ref = BaseName(entry_base.name, entry_base.version).ref
            carried = {base_ref: base_entry(repo.git, BaseName(entry_base.name, entry_base.version))[0]}
        with _written_to(output, repo.store.tmp_dir) as local:
            info = write_bundle(repo.git, repo.store, local, entry=entry, ref=ref, kind=kind, requires=requires,
                                tmp_dir=repo.store.tmp_dir, base=base, base_roots=base_roots, bases=carried)
    shown = output if output.startswith("s3://") else os.path.abspath(output)
    return ExportResult(shown, info.kind, info.entry, info.ref, info.requires, len(info.commits), info.blobs, info.bytes)


@contextlib.contextmanager
def _written_to(output: str, tmp_dir: str) -> Iterator[str]:
    """The local file to write a bundle to: `output`, or for s3://BUCKET/KEY a temp file
    uploaded there once whole (an object appears whole or not at all)."""
    if not output.startswith("s3://"):
        yield output
        return
    from vml.transport.s3 import object_transport  # boto3 is loaded only for s3:// URLs

    transport, key = object_transport(output)
    fd, local = tempfile.mkstemp(prefix="export-", suffix=".bundle", dir=tmp_dir)
    os.close(fd)
    try:
        yield local
        transport.write_from(key, local)
    finally:
        os.unlink(local)
        transport.close()


def _download(url: str, local: str) -> None:
    """A bundle a vml server offers (http(s)://) or an object in a bucket (s3://BUCKET/KEY)."""
    if url.startswith("s3://"):
        from vml.transport.s3 import object_transport  # boto3 is loaded only for s3:// URLs

        transport, key = object_transport(url)
        try:
            transport.read_to(key, local)
        finally:
            transport.close()
    else:
        from vml.transport.http import download_url  # httpx is loaded only to reach a server

        download_url(url, local)


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


def import_bundle(repo: Repository, path: str, *, as_name: str | None = None, force: bool = False, verify: bool = False,
                  allowed: str | None = None) -> ImportResult:
    """Check a bundle whole (its requirements, every hash, that its entries are complete),
    then store it and set the branch or tag it was exported from (or --as BRANCH). `path`
    may be the http(s) URL of a bundle a vml server offers: it is downloaded first."""
    if path.startswith(("http://", "https://", "s3://")):
        fd, local = tempfile.mkstemp(prefix="import-", suffix=".bundle", dir=repo.store.tmp_dir)
        os.close(fd)
        try:
            _download(path, local)
            return dataclasses.replace(import_bundle(repo, local, as_name=as_name, force=force, verify=verify, allowed=allowed), path=path)
        finally:
            os.unlink(local)
    with repo.shared_lock():
        try:
            info, store_all = read_bundle(repo.git, repo.store, path)
        except BaseMissing as missing:  # a differential bundle: its catalog may have the base
            base_name, _, version = missing.base.rpartition(":")
            raise missing_base(repo, BaseName(base_name, version), missing.what) from None
        ref = BRANCH_PREFIX + as_name if as_name else info.ref
        if ref is None:
            raise UsageError("this bundle was exported from an entry id, not a branch or tag: name a branch with --as BRANCH")
        if as_name:
            check_name(repo.git, "branch", as_name)
        current = repo.git.ref_target(ref)
        tag = ref.startswith(TAG_PREFIX)
        status = classify(repo.git, current, info.entry, tag=tag, force=force, descends=lambda old: _leads_to(repo, old, info))
        if status == REJECTED:
            assert current is not None  # a ref that does not exist is new, never rejected
            raise UsageError(
                f"{'tag' if tag else 'branch'} {short_name(ref)} is at {current[:12]}, which the bundle's entry does not descend from: "
                f"import it under another name with --as BRANCH, or replace it with --force"
            )
        on_it = areas_on_branch(repo.git, short_name(ref)) if ref.startswith(BRANCH_PREFIX) and status != UP_TO_DATE and current else []
        if on_it:
            raise UsageError(
                f"branch {short_name(ref)} is checked out in area {on_it[0]}, whose files would no longer match it: "
                f"import with --as BRANCH, then 'vml checkout BRANCH -a {on_it[0]}'"
            )
        store_all()  # objects first: nothing names them until the refs below move
        check_entry(repo, info.entry, verify, allowed)  # a bad signature: nothing names them
        for base_ref, base_commit in info.bases.items():
            held = repo.git.ref_target(base_ref)
            if held is not None and not same_base_image(repo.git, held, base_commit):
                name = BaseName.of_ref(base_ref)
                raise UsageError(f"the bundle's base {name} is another image than the base {name} here (digests differ); nothing was recorded")
        for base_ref, base_commit in info.bases.items():
            if repo.git.ref_target(base_ref) is None:
                repo.git.set_direct(base_ref, base_commit, f"import: base from {os.path.basename(path)}")
        if status != UP_TO_DATE:
            repo.git.ensure_reflog(ref)
            repo.git.update_ref(ref, info.entry, current, f"import: {os.path.basename(path)}")
    count, shown = info.privileged
    return ImportResult(os.path.abspath(path), info.kind, info.entry, short_name(ref), status, info.requires, len(info.commits), info.blobs,
                        count, [f"{quote_path(p)} ({why})" for p, why in shown])


def _leads_to(repo: Repository, current: str, info: BundleInfo) -> bool:
    """Whether the bundle's entry descends from `current`, judged before anything is stored:
    `current` is one of the bundle's commits, or a required entry or one of their ancestors."""
    if current in info.commits:
        return True
    return any(current == required or repo.git.is_ancestor(current, required) for required in info.requires)
