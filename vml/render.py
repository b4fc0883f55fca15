"""Everything vml prints: human output (rich on a terminal), --json output, progress and errors."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from vml import api
from vml.pathnames import lossless_text, quote_path

if TYPE_CHECKING:
    from rich.console import Console

# What makes rich call a pipe a terminal (or a terminal not one): with none of these set,
# a stream's isatty() answers as rich would.
_RICH_TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS", "JUPYTER_LINES")


class _LazyConsole:
    """rich's Console, made at its first use: importing rich costs every command about
    25 ms of start-up. Into a pipe, where rich drops every style, a line of markup is
    written as its plain text without it (a script's `vml commit`, `vml diff --name-status`
    never load rich)."""

    def __init__(self, stderr: bool = False):
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # (emoji=False: a path or message holding ":name:" is printed as it is)
            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True, emoji=False)
        return self._console

    @property
    def is_terminal(self) -> bool:
        if self._console is None and not any(name in os.environ for name in _RICH_TERMINAL_ENV):
            isatty = getattr(self._stream, "isatty", None)
            try:
                return bool(isatty and isatty())
            except ValueError:  # a closed stream
                return False
        return self.console.is_terminal

    @property
    def _stream(self):
        return sys.stderr if self._stderr else sys.stdout

    def print(self, *objects: Any, style: str | None = None, end: str = "\n", **options: Any) -> None:
        if self._console is None and not options and all(isinstance(o, str) and "\t" not in o for o in objects) and not self.is_terminal:
            self._stream.write(" ".join(plain_text(o) for o in objects) + end)  # (rich would expand a tab)
            return
        self.console.print(*objects, style=style, end=end, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


out: Any = _LazyConsole()
err: Any = _LazyConsole(stderr=True)

# rich's markup tags, as rich.markup finds them: `[bold]`, `[/]`, `[#ff0000]`, `[@click]`;
# backslashes before one escape it.
_MARKUP_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")
_ESCAPABLE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escape(text: str) -> str:
    """Text made safe to put in markup, exactly as rich.markup.escape makes it (tests
    check it), without loading rich."""
    text = _ESCAPABLE.sub(lambda match: f"{match[1]}{match[1]}\\{match[2]}", text)
    return text + "\\" if text.endswith("\\") and not text.endswith("\\\\") else text


_CONTROLS_RICH_DROPS = dict.fromkeys((7, 8, 11, 12, 13))  # bell, backspace, VT, FF, CR


def plain_text(markup: str) -> str:
    """The text rich prints for a line of markup where it prints no style (tests check it)."""
    markup = markup.translate(_CONTROLS_RICH_DROPS)
    if "[" not in markup:
        return markup

    def untag(match: re.Match) -> str:
        backslashes, escaped = divmod(len(match[2]), 2)
        return "\\" * backslashes + (match[1][len(match[2]):] if escaped else "")

    return _MARKUP_TAG.sub(untag, markup)


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _count(n: int, one: str, many: str | None = None) -> str:
    """A number and its noun, singular for exactly one: "1 file", "2 files", "0 files"."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return lossless_text(value)
    return value


def print_json(value: Any) -> None:
    """JSON on stdout, UTF-8. A path's bytes that are not UTF-8 are lone surrogates in its
    text (see pathnames.lossless_text): they come out as \\udcXX escapes, which JSON allows
    and Python's json reads back to the same surrogates."""
    text = json.dumps(_jsonable(value), indent=2, ensure_ascii=False) + "\n"
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace"))
    sys.stdout.buffer.flush()


def _path(text: str) -> str:
    """A path of a result, quoted as git quotes it (see pathnames.quote_path)."""
    return quote_path(os.fsencode(text))


def error(message: str) -> None:
    err.print(f"[bold red]vml: error:[/] {escape(message)}")


def warning(message: str) -> None:
    err.print(f"[yellow]vml: warning:[/] {escape(message)}")


def notice(message: str) -> None:
    """What a long wait is waiting for, on a terminal only (like the progress lines)."""
    if err.is_terminal:
        err.print(f"[dim]vml: {escape(message)}[/]")


# -- progress


@contextlib.contextmanager
def progress(title: str, *, enabled: bool, unit: str = "files") -> Iterator[Callable[[Any], None] | None]:
    """A progress callback drawing a live line on a terminal; None when piped or disabled."""
    if not enabled or not err.is_terminal:
        yield None
        return
    # Imported here: rich.progress costs every command 10 ms of start-up, and only a
    # terminal ever sees it.
    from rich.progress import Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns = [
        TextColumn(f"[bold]{title}[/]"),
        TextColumn("{task.fields[files]:>9,} {task.fields[unit]}"),
        TextColumn("{task.fields[size]:>10}"),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err.console, transient=True) as bar:
        task = bar.add_task(title, total=None, files=0, size="", unit=unit)

        def update(counts: Any) -> None:
            files = getattr(counts, "files", None)
            if files is None:
                files = getattr(counts, "nodes", 0)
            done = getattr(counts, "bytes", None)
            if done is None:
                done = getattr(counts, "bytes_written", 0)
            bar.update(task, completed=done, files=files, size=size(done))

        yield update


@contextlib.contextmanager
def step_progress(title: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{title}[/]"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=err.console, transient=True) as bar:
        task = bar.add_task(title, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextlib.contextmanager
def transfer_progress(title: str, *, enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """A bar for pushes and fetches: bytes moved of the total, rate and time left."""
    if not enabled or not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = [TextColumn(f"[bold]{title}[/]"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err.console, transient=True) as bar:
        task = bar.add_task(title, total=None)
        yield lambda moved: bar.update(task, completed=moved.done, total=moved.total)


# -- commands


def init_result(result: api.InitResult) -> None:
    kind = "bare vml repository" if result.bare else "vml repository"
    out.print(f"Initialized empty {kind} in {escape(result.path)}")


def area_info(info: api.AreaInfo) -> None:
    where = f"on branch {info.branch}" if info.branch else "detached"
    entry = info.entry[:12] if info.entry else "no entry yet"
    out.print(f"{escape(info.name)}\t{info.kind}\t{escape(info.location)}\t{where}\t{entry}")


def area_removed(result: api.AreaRemoved) -> None:
    out.print(escape(f"removed area {result.name} ({result.kind})" + (f", which was at {result.entry[:12]}" if result.entry else "")))
    for what in result.kept:
        out.print(escape(f"  kept: {what}"))


def area_show(result: api.AreaShow) -> None:
    area_info(result.area)
    for key, value in sorted(result.settings.items()):
        out.print(escape(f"  {key}: {value}"))
    out.print(escape(f"rules ({result.rules_file}):"))
    for pattern in result.include:
        out.print(escape(f"  include {pattern}"))
    for pattern in result.exclude:
        out.print(escape(f"  exclude {pattern}"))


def commit_result(result: api.CommitResult) -> None:
    if not result.created:
        out.print(f"nothing changed in area {escape(result.area)} since entry {result.entry}")
        return
    where = result.branch or "detached"
    out.print(escape(f"[{where} {result.entry}] saved area {result.area}"))
    out.print(
        f" {_count(result.files, 'file')}, {size(result.logical_bytes)}; read {_count(result.files_read, 'file')} "
        f"({size(result.bytes_read)}); {size(result.added_bytes)} new in the store"
    )
    for path in result.skipped:
        warning(f"not saved: {path}")
    for path in result.changed_while_reading:
        warning(f"changed while it was read (saved as read; commit again for a stable copy): {path}")


def _date(entry: api.LogEntry) -> str:
    zone = datetime.timezone(datetime.timedelta(minutes=entry.offset))
    when = datetime.datetime.fromtimestamp(entry.time, zone)
    return when.strftime("%a %b %d %H:%M:%S %Y ") + when.strftime("%z")


def _decorated(entry: api.LogEntry) -> str:
    return f" [bold]({escape(', '.join(entry.decorations))})[/]" if entry.decorations else ""


def log_entries(entries: list[api.LogEntry], *, oneline: bool, graph: bool) -> None:
    prefixes = graph_prefixes(entries) if graph else None
    for number, entry in enumerate(entries):
        first, rest, connectors = prefixes[number] if prefixes else ("", "", [])
        summary = (entry.message.strip().splitlines() or [""])[0]
        if oneline:
            out.print(f"{first}[yellow]{entry.id[:12]}[/]{_decorated(entry)} {escape(summary)}")
            for line in connectors:
                out.print(line)
            continue
        lines = [
            f"[yellow]entry {entry.id}[/]{_decorated(entry)}",
            escape(f"Author: {entry.author} <{entry.email}>"),
            f"Date:   {_date(entry)}",
        ]
        if entry.area is not None:
            lines.append(escape(f"Area:   {entry.area} · {_count(entry.files, 'file')} · {size(entry.logical_bytes)}"))
        lines.append("")
        lines.extend("    " + escape(line) for line in entry.message.rstrip().splitlines())
        lines.append("")
        for index, line in enumerate(lines):
            out.print((first if index == 0 else rest) + line)
        for line in connectors:
            out.print(line)


def graph_prefixes(entries: list[api.LogEntry]) -> list[tuple[str, str, list[str]]]:
    """A git-like graph: for each entry, its line prefix, the prefix of its other lines,
    and connector lines to print after it."""
    lanes: list[str] = []
    result = []
    for entry in entries:
        if entry.id not in lanes:
            lanes.append(entry.id)
        column = lanes.index(entry.id)
        first = "".join("* " if i == column else "| " for i in range(len(lanes)))
        parents = list(entry.parents)
        new_lanes = lanes[:column] + parents[:1] + lanes[column + 1 :]
        for parent in parents[1:]:
            if parent not in new_lanes:
                new_lanes.append(parent)
        connectors = []
        if len(parents) > 1:
            connectors.append("".join("|\\" if i == column else "| " for i in range(len(lanes))).rstrip())
        if not parents:
            new_lanes = lanes[:column] + lanes[column + 1 :]
        # Lanes that now wait for the same entry join: draw the merge of the right one.
        deduplicated: list[str] = []
        for lane in new_lanes:
            if lane in deduplicated:
                joined = len(deduplicated)
                connectors.append("".join("| " for _ in range(joined - 1)) + "|/")
                continue
            deduplicated.append(lane)
        lanes = deduplicated
        rest = "".join("| " for _ in range(max(len(lanes), 1))) if lanes else "  "
        result.append((first, rest, connectors))
    return result


def show_result(result: api.ShowResult) -> None:
    entry, info = result.entry, result.info
    out.print(f"[yellow]entry {entry.id}[/]{_decorated(entry)}")
    out.print(escape(f"Author: {entry.author} <{entry.email}>"))
    out.print(f"Date:   {_date(entry)}")
    out.print(f"Parent: {', '.join(entry.parents) if entry.parents else '(none: first entry)'}")
    if info.scrub is not None:
        removed = ", ".join(f"{category} {_count(counts.get('files_dropped', 0) + counts.get('files_changed', 0), 'file')}"
                            for category, counts in info.scrub.get("categories", {}).items())
        out.print(escape(f"Public: scrubbed by vml publish ({removed or 'nothing found'}); area {info.area} ({info.area_kind})"))
    else:
        out.print(escape(f"Area:   {info.area} ({info.area_kind}: {info.location}), saved on host {info.host}"))
    if info.memory is not None:
        out.print(escape(f"Memory: saved with {len(info.memory_disks)} disk(s); resume with 'vml checkout --resume'; never public"))
    if info.base is not None:
        label = "Base image" if info.kind == "base" else "Base:  "
        out.print(escape(f"{label} {info.base} ({info.base.digest})"))
    out.print(f"Files:  {_count(info.files, 'file')}, {_count(result.directories, 'directory', 'directories')}, "
              f"{_count(result.symlinks, 'symlink')}, {result.other:,} other")
    out.print(f"Size:   {size(info.logical_bytes)} logical, {size(result.stored_bytes)} stored, {size(info.added_bytes)} added by this entry")
    for shown in result.presets:
        held = f"{_count(shown.files, 'file')}" if shown.files is not None else "not there when it was saved"
        out.print(escape(f"Preset: {shown.preset}: includes {shown.what}, {shown.path} ({held})"))
    if info.skipped:
        out.print(escape(f"Skipped: {', '.join(info.skipped)}"))
    out.print("")
    for line in entry.message.rstrip().splitlines():
        out.print("    " + escape(line))


def checkout_result(result: api.CheckoutResult) -> None:
    counts = result.counts
    where = f"area {result.area}" if result.area else result.target
    out.print(
        f"checked out {result.entry[:12]} into {escape(where)}: {_count(counts.files_written, 'file')} written "
        f"({size(counts.bytes_written)}), {_count(counts.metadata_only, 'metadata update')}, {counts.removed:,} removed"
    )
    if result.area:
        out.print(f"area {escape(result.area)} is " + (f"on branch {result.branch}" if result.branch else f"detached at {result.entry[:12]}"))
    for line in result.not_reproduced:
        warning(f"not reproduced: {line}")
    for line in result.warnings:
        warning(line)
    restore_notice(result.restore_notice)


def vm_state(state: api.VmState) -> None:
    if state.deleted:
        out.print(escape(f"area {state.area}: deleted " + ", ".join(state.deleted)))
        return
    vm = state.vm
    if vm.state == "not defined":
        out.print(escape(f"{state.area}\t{vm.domain}\tnot defined (vml checkout ENTRY --new-vm -a {state.area})\t{vm.uri}"))
        return
    ssh = f"\tssh {state.ssh}" if state.ssh else ""
    out.print(escape(f"{state.area}\t{vm.domain}\t{vm.state}\t{vm.driver} ({vm.acceleration})\t"
                     f"{vm.memory_kib // 1024} MiB, {vm.vcpus} vCPU\t{vm.uri}{ssh}"))
    for note in state.notes:
        out.print(escape(f"  {note}"))


def image_result(result: api.ImageResult) -> None:
    out.print(escape(f"wrote {result.format} image {result.path} ({size(result.bytes)}) of entry {result.entry[:12]}: "
                     f"{_count(result.files, 'file')}, in {result.seconds:.1f} s"))
    out.print(escape(f"  boot it with kernel {result.kernel}" + (f", initrd {result.initrd}" if result.initrd else "")
                     + f", command line '{result.cmdline}'"))
    if result.base is not None:
        out.print(escape(f"  stored as base {result.base.name}:{result.base.version}: vml area add NAME --libvirt URI "
                         f"--base {result.base.name}:{result.base.version}"))


def deploy_result(result: api.DeployResult) -> None:
    out.print(escape(f"deployment {result.deployment}: {_count(len(result.vms), 'domain')} of entry {result.entry[:12]} "
                     f"in {result.seconds:.1f} s"))
    for line in result.carried:
        out.print(escape(f"  carried {line}"))
    for vm in result.vms:
        out.print(escape(f"  {vm.domain}\t{vm.host}\t{vm.state}" + (f"\tssh port {vm.ssh_port} on the host's loopback" if vm.ssh_port else "")))


def deployed_vm(vm: api.DeployedVm) -> None:
    out.print(escape(f"{vm.deployment}\t{vm.host}\t{vm.domain}\t{vm.state}\t{vm.entry[:12]}" + (f"\tssh port {vm.ssh_port}" if vm.ssh_port else "")))


def release_result(result: api.ReleaseResult) -> None:
    if not result.released:
        out.print("nothing to release")
    for vm in result.released:
        out.print(escape(f"released {vm.domain} on {vm.host} (deployment {vm.deployment})"))
    for volume in result.deleted:
        out.print(escape(f"  deleted {volume}"))


def share_info(info: api.ShareInfo) -> None:
    flags = [flag for flag, on in (("read-only", info.read_only), ("host folder missing", info.host_missing)) if on]
    out.print(escape(f"{info.area}\t{info.host}\t{info.guest or '(not mounted by vml)'}\t{info.tag}" + (f"\t({', '.join(flags)})" if flags else "")))


def share_result(result: api.ShareResult) -> None:
    share = result.share
    out.print(escape(f"{result.action} shared folder {share.host} at {share.guest} in area {share.area}'s guest"
                     + (" (read-only)" if share.read_only else "")))
    for note in result.notes:
        out.print(escape(f"  {note}"))


def base_info(info: api.BaseInfo) -> None:
    out.print(escape(
        f"{info.name}\t{info.version}\t{info.digest[:23]}…\t{info.source}\t{_count(info.files, 'file')}, "
        f"{size(info.logical_bytes)}\t{info.entry[:12]}"
    ))


def catalog_info(info: api.CatalogInfo) -> None:
    """A catalog: its base and URL; with its versions when it was read (show, add)."""
    out.print(escape(f"{info.name}\t{info.url}" + ("\tauto-fetch" if info.auto_fetch else "")))
    for version in info.versions or []:
        marks = [mark for mark, on in (("latest", version.version == info.latest), ("here", version.here)) if on]
        out.print(escape(f"  {version.version}\t{version.published or '-'}\t{size(version.bytes) if version.bytes is not None else '-'}"
                         f"\t{version.digest[:23]}…" + (f"\t({', '.join(marks)})" if marks else "")))


def base_fetched(result: api.BaseFetchResult) -> None:
    base = result.base
    if result.already_here:
        out.print(escape(f"base {base.name}:{base.version} is here already ({base.digest[:23]}…): nothing fetched"))
        return
    resumed = f", going on from {size(result.resumed_bytes)} an earlier run had" if result.resumed_bytes else ""
    out.print(escape(f"fetched base {base.name}:{base.version} from {result.catalog_url}: {size(result.downloaded_bytes)} "
                     f"downloaded{resumed}, digests checked, in {result.seconds:.1f} s"))
    base_info(base)


def switched_to_new_branch(result: api.CheckoutResult) -> None:
    out.print(escape(f"area {result.area} is on a new branch {result.branch}" + (f" at {result.entry[:12]}" if result.entry else "")))


def raw_bytes(data: bytes) -> None:
    """A file's bytes, unchanged, on standard output."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _raw(line: str, style: str | None = None) -> None:
    """A line of data that must reach a pipe unchanged (rich would expand its tabs)."""
    if out.is_terminal:
        out.print(f"[{style}]{escape(line)}[/]" if style else escape(line))
    else:
        sys.stdout.write(line + "\n")


def diff_name_status(changes: list[api.DiffEntry], *, nul: bool = False) -> None:
    if nul:  # -z: `X NUL path NUL`, the path's exact bytes, as git prints them
        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(change.status.encode() + b"\0" + os.fsencode(change.path) + b"\0" for change in changes))
        sys.stdout.buffer.flush()
        return
    for change in changes:
        _raw(f"{change.status}\t{_path(change.path)}")


def _parts(change: api.DiffEntry) -> str:
    """What changed, with old and new values where they are short: "content, mode 0644 -> 0600"."""
    described = []
    for part in change.changes:
        if part == "mode":
            described.append(f"mode {change.old['mode']} -> {change.new['mode']}")
        elif part == "owner":
            described.append(f"owner {change.old['uid']}:{change.old['gid']} -> {change.new['uid']}:{change.new['gid']}")
        elif part == "type":
            described.append(f"type {change.old['kind']} -> {change.new['kind']}")
        elif part == "flags":
            described.append(f"flags {change.old['flags'] or '-'} -> {change.new['flags'] or '-'}")
        elif part == "environment" and ":" in change.path:  # a variable: its values, shortened
            old = _short_value(change.old["value"]) if change.old else "unset"
            new = _short_value(change.new["value"]) if change.new else "unset"
            described.append(f"{old} -> {new}")
        else:
            described.append(part)
    return ", ".join(described)


def _short_value(value: str, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def diff_changes(changes: list[api.DiffEntry]) -> None:
    for change in changes:
        parts = _parts(change)
        _raw(f"{change.status}  {_path(change.path)}" + (f"  ({parts})" if parts else ""))
        if change.patch:
            patch(change.patch)


def patch(text: str) -> None:
    for line in text.removesuffix("\n").split("\n"):  # not splitlines: a \r or \f belongs to its line
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else None
        if line.startswith(("+++", "---")):
            style = "bold"
        _raw(line, style)


def diff_stat(changes: list[api.DiffEntry]) -> None:
    if not changes:
        return
    width = min(max(len(_path(c.path)) for c in changes), 60)
    grown = shrunk = 0
    counts = {"A": 0, "D": 0, "M": 0, "T": 0, "P": 0}
    for change in changes:
        counts[change.status] += 1
        old_size = change.old["size"] if change.old and change.old.get("kind") == "file" else 0
        new_size = change.new["size"] if change.new and change.new.get("kind") == "file" else 0
        grown += max(new_size - old_size, 0)
        shrunk += max(old_size - new_size, 0)
        sizes = f"{size(old_size) if change.old else '-'} -> {size(new_size) if change.new else '-'}"
        out.print(f" {change.status} {escape(_path(change.path)):<{width}} | {sizes}")
    out.print(
        f" {_count(len(changes), 'path')} changed: {counts['A']} added, {counts['D']} deleted, {counts['M']} modified, "
        f"{counts['T']} type changed, {counts['P']} properties only; +{_count(grown, 'byte')}, -{_count(shrunk, 'byte')}"
    )


STATUS_GROUPS = (("A", "added"), ("D", "deleted"), ("M", "modified"), ("T", "type changed"), ("P", "properties only"))


def status_result(result: api.StatusResult, *, short: bool, nul: bool = False) -> None:
    if short:
        diff_name_status(result.changes, nul=nul)
        return
    out.print(escape(f"area {result.area} ({result.kind}: {result.location})"))
    if result.vm is not None:
        out.print(escape(f"domain is {result.vm}"))
    where = f"on branch {result.branch}" if result.branch else "detached"
    if result.entry is None:
        out.print(escape(f"{where}, no entry yet"))
    else:
        out.print(escape(f"{where}, at entry {result.entry[:12]} ({result.summary})"))
    if result.clean:
        out.print("nothing changed since that entry" if result.entry else "nothing to save")
        return
    out.print(f"changes since {'that entry' if result.entry else 'nothing'} ({len(result.changes):,}):")
    for status, title in STATUS_GROUPS:
        group = [c for c in result.changes if c.status == status]
        if group:
            out.print(f"  {title} ({len(group):,}):")
        for change in group:
            parts = _parts(change) if status in "MTP" else ""
            out.print(f"    {escape(_path(change.path))}" + (f"  ({escape(parts)})" if parts else ""))


def ref_list(refs: list[api.RefResult]) -> None:
    width = max((len(r.name) for r in refs), default=0)
    for ref in refs:
        marker = "*" if ref.areas else " "
        areas = f"  [area {', '.join(ref.areas)}]" if ref.areas else ""
        out.print(f"{marker} {escape(ref.name):<{width}}  [yellow]{ref.entry[:12]}[/] {escape(ref.summary)}{escape(areas)}")


def ref_created(kind: str, result: api.RefResult) -> None:
    out.print(escape(f"{kind} {result.name} at {result.entry[:12]} ({result.summary})"))


def ref_deleted(kind: str, result: api.RefResult) -> None:
    out.print(escape(f"deleted {kind} {result.name} (was {result.entry[:12]} {result.summary})"))


def rm_result(result: api.RmResult) -> None:
    out.print(escape(f"dropped entry {result.entry[:12]} ({result.summary}); {_count(result.rewritten, 'later entry', 'later entries')} recorded again"))
    for ref, (old, new) in result.moved.items():
        out.print(escape(f"  {ref}: {old[:12]} -> {new[:12]}"))
    for area in result.areas_moved:
        warning(f"area {area} now stands at the dropped entry's parent and keeps its files: 'vml status -a {area}' shows the difference")
    for tag in result.kept_by:
        warning(f"tag {tag} still reaches the dropped entry, so its data stays")
    out.print(f"the entry stays recoverable until gc expires it: vml branch NAME {result.entry[:12]}")


def reflog_lines(lines: list[api.ReflogEntry]) -> None:
    for line in lines:
        when = datetime.datetime.fromtimestamp(line.time).strftime("%Y-%m-%d %H:%M")
        entry = line.entry[:12] if line.entry else "(deleted)   "
        out.print(f"[yellow]{entry}[/] {escape(line.selector)}: {when} {escape(line.message)}")


def fsck_report(report: api.FsckReport) -> None:
    out.print(f"checked {_count(report.entries, 'entry', 'entries')}, {_count(report.packs, 'pack')}, "
              f"{_count(report.blobs, 'object')} ({size(report.bytes)})")
    for problem in report.problems:
        out.print(f"[red]damage:[/] {escape(problem)}")
    for note in report.warnings:
        out.print(f"[yellow]warning:[/] {escape(note)}")
    for damaged in report.damaged:
        out.print(f"[red]entry {damaged.entry[:12]}[/] ({escape(damaged.message)}) is damaged:")
        for path, reason in damaged.paths:
            out.print(f"  {escape(path)}: {escape(reason)}")
    out.print("no damage found" if report.ok else "[bold red]the repository is damaged[/]")


def gc_result(result: api.GcResult) -> None:
    out.print(
        f"freed {size(result.bytes_freed)} ({_count(result.bytes_freed, 'byte')}): {_count(result.blobs_removed, 'unreachable object')} "
        f"removed, {_count(result.packs_deleted, 'pack')} deleted, {result.packs_rewritten:,} rewritten; "
        f"{_count(result.packs_after, 'pack')}, {size(result.bytes_after)} remain"
    )
    if result.reflog_lines_expired or result.git_objects_removed:
        out.print(f"expired {_count(result.reflog_lines_expired, 'reflog line')}; removed {_count(result.git_objects_removed, 'git object')}")


def remote_gc_result(result: api.RemoteGcResult) -> None:
    out.print(escape(f"gc of {result.url}"))
    out.print(
        f" freed {size(result.bytes_freed)}: {_count(result.blobs_removed, 'object')} removed (unreachable, or a second copy), "
        f"{_count(result.packs_deleted, 'pack')} deleted, {result.packs_rewritten:,} rewritten ({_count(sum(result.requests.values()), 'request')})"
    )
    delay = f"{result.sweep_delay / 60:.0f} minutes" if result.sweep_delay >= 120 else f"{result.sweep_delay:.0f} seconds"
    later = f"; a gc after {delay} removes what is still unreachable then"
    if result.condemned_blobs or result.pending_records:
        out.print(f" condemned {_count(result.condemned_blobs, 'unreachable object')} now, "
                  f"{_count(result.pending_records, 'earlier record')} not yet due{later}")
    if result.replica_bytes_freed:
        out.print(f" freed {size(result.replica_bytes_freed)} of this server's copy (data the bucket holds)")


# -- remotes


def remote_info(info: api.RemoteInfo) -> None:
    out.print(f"{escape(info.name)}\t{escape(info.url)}")


def _ref_changes(changes: list[api.RefChange], arrow: str) -> None:
    for change in changes:
        old = change.old[:12] if change.old else "(none)"
        line = f" {change.status:>12}  {change.ref}  {old} {arrow} {change.new[:12]}"
        if change.reason:
            line += f"  ({change.reason})"
        out.print(escape(line), style="red" if change.status == "rejected" else None)


def push_result(result: api.PushResult) -> None:
    out.print(escape(f"To {result.url}"))
    _ref_changes(result.refs, "->")
    out.print(
        f" sent {_count(result.commits, 'entry', 'entries')}, {_count(result.blobs, 'object')} in {_count(result.packs, 'pack')} "
        f"({size(result.blob_bytes)} of objects, {size(result.bytes_sent)} in all{_requests(result.requests)}) in {result.seconds:.1f} s"
    )
    if result.rejected:
        warning("some refs were rejected: nothing of theirs changed on the remote")


def fetch_result(result: api.FetchResult) -> None:
    out.print(escape(f"From {result.url}"))
    _ref_changes(result.refs, "->")
    out.print(
        f" received {_count(result.commits, 'entry', 'entries')}, {_count(result.blobs, 'object')} "
        f"({size(result.blob_bytes)} of objects, {size(result.bytes_received)} in all{_requests(result.requests)}) in {result.seconds:.1f} s"
    )


def _requests(requests: dict[str, int]) -> str:
    """', 31 requests' where the transport counts them (object storage bills by the request)."""
    return f", {_count(sum(requests.values()), 'request')}" if requests else ""


def pull_result(result: api.PullResult) -> None:
    fetch_result(result.fetched)
    if result.checkout is None:
        out.print(f"area {escape(result.area)}: {escape(result.branch)} is up to date")
        return
    old = result.old[:12] if result.old else "(none)"
    out.print(escape(f"area {result.area}: {result.branch} fast-forward {old} -> {result.new[:12]}"))
    checkout_result(result.checkout)


def clone_result(result: api.CloneResult) -> None:
    fetch_result(result.fetched)
    out.print(escape(f"Cloned into {result.path}/.vml"))
    if result.branch:
        out.print(escape(f" branch {result.branch} at {result.entry[:12]}; put it in a working area with:"))
        out.print(escape(f"   vml area add wa --dir PATH && vml checkout {result.branch}"))
    elif result.url.startswith(("http://", "https://")):
        out.print(" the server shows you no branches there (it shows only what you may read: are you logged in? vml login URL)")
    else:
        out.print(" the remote has no branches yet")


# -- bundles


def export_result(result: api.ExportResult) -> None:
    needs = f"; needs {', '.join(r[:12] for r in result.requires)}" if result.requires else "; needs nothing"
    name = f" ({result.ref.split('/', 2)[2]})" if result.ref else ""
    out.print(escape(f"wrote {result.kind} bundle of {result.entry[:12]}{name} to {result.path}"))
    out.print(f" {_count(result.commits, 'entry', 'entries')}, {_count(result.blobs, 'object')}, {size(result.bytes)}{escape(needs)}")


def import_result(result: api.ImportResult) -> None:
    out.print(escape(f"imported {result.kind} bundle {result.path}: {_count(result.commits, 'entry', 'entries')}, {_count(result.blobs, 'object')}"))
    out.print(escape(f" {result.ref}: {result.status} at {result.entry[:12]}"))
    if result.privileged:
        more = f" (the first {len(result.privileged_paths)})" if result.privileged > len(result.privileged_paths) else ""
        warning(f"the bundle brings {_count(result.privileged, 'file')} that run with root's rights or are devices{more}: "
                f"{', '.join(result.privileged_paths)}; a checkout by root restores them as they are, like tar -p")


_SCRUB_COUNTS = (("files_dropped", "file dropped", "files dropped"), ("files_changed", "file changed", "files changed"), ("lines", "line", "lines"))


def publish_result(result: api.PublishResult) -> None:
    if result.dry_run:
        for finding in result.findings:
            lines = f" lines {','.join(str(n) for n in finding.lines[:12])}{'…' if len(finding.lines) > 12 else ''}" if finding.lines else ""
            preview = f"  {finding.preview}" if finding.preview else ""
            preview += f"  {finding.fingerprint}" if finding.fingerprint else ""
            unreviewed = "  (no rule covers this)" if not finding.reviewed else ""
            out.print(escape(f"{finding.action:<10} {finding.rule:<24} {_path(finding.path)}{lines}{preview}{unreviewed}"))
        for path in result.packaged:
            out.print(escape(f"{'keep':<10} {'packaged':<24} {_path(path)}  (a match, but the file is exactly its package's)"))
    if result.dry_run:
        out.print(f"dry run: public/{escape(result.name)} not made; {_count(result.files, 'file')} ({size(result.logical_bytes)}) would be public")
    elif result.refused:
        out.print(f"--strict: public/{escape(result.name)} not made")
    elif result.created:
        parent = f" (after {result.parent[:12]})" if result.parent else ""
        signed = ", signed" if result.signed else ""
        out.print(f"public entry {result.entry[:12] if result.entry else ''} on public/{escape(result.name)}{parent}: "
                  f"{_count(result.files, 'file')}, {size(result.logical_bytes)}{signed}")
    else:
        out.print(f"public/{escape(result.name)} is up to date at {result.entry[:12] if result.entry else ''}: nothing changed since")
    for category, counts in result.categories.items():
        parts = [_count(counts[key], one, many) for key, one, many in _SCRUB_COUNTS if counts.get(key)]
        out.print(escape(f"  {category}: {', '.join(parts)}"))
    for dangling in result.dangling:
        warning(f"{dangling.path}:{dangling.line} names {dangling.names}, which is left out")
    if result.unreviewed:
        warning(f"{_count(result.unreviewed, 'finding')} no rule covers (marked in --dry-run): review them, and add rules (--rules FILE)")
    if result.hints and not result.dry_run and result.created:
        out.print("a checkout of it will say: " + escape("; ".join(result.hints)))


def restore_notice(lines: list[str]) -> None:
    """What a checkout of a public entry could not bring back, and what to do."""
    if lines:
        out.print("this is a public entry; what it could not bring back:")
        for line in lines:
            out.print(escape(f"  - {line}"))
