"""Everything vml prints: human output (rich on a terminal), --json output, progress and errors."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import sys
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from vml import api
from vml.objects.gc import GcStats

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(value), indent=2, ensure_ascii=False) + "\n")


def error(message: str) -> None:
    err.print(f"[bold red]vml: error:[/] {escape(message)}")


def warning(message: str) -> None:
    err.print(f"[yellow]vml: warning:[/] {escape(message)}")


# -- progress


@contextlib.contextmanager
def progress(title: str, *, enabled: bool, unit: str = "files") -> Iterator[Callable[[Any], None] | None]:
    """A progress callback drawing a live line on a terminal; None when piped or disabled."""
    if not enabled or not err.is_terminal:
        yield None
        return
    columns = [
        TextColumn(f"[bold]{title}[/]"),
        TextColumn("{task.fields[files]:>9,} {task.fields[unit]}"),
        TextColumn("{task.fields[size]:>10}"),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err, transient=True) as bar:
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
    with Progress(TextColumn(f"[bold]{title}[/]"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(title, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# -- commands


def init_result(result: api.InitResult) -> None:
    kind = "bare vml repository" if result.bare else "vml repository"
    out.print(f"Initialized empty {kind} in {escape(result.path)}")


def area_info(info: api.AreaInfo) -> None:
    where = f"on branch {info.branch}" if info.branch else "detached"
    entry = info.entry[:12] if info.entry else "no entry yet"
    out.print(f"{escape(info.name)}\t{info.kind}\t{escape(info.location)}\t{where}\t{entry}")


def commit_result(result: api.CommitResult) -> None:
    if not result.created:
        out.print(f"nothing changed in area {escape(result.area)} since entry {result.entry}")
        return
    where = result.branch or "detached"
    out.print(escape(f"[{where} {result.entry}] saved area {result.area}"))
    out.print(
        f" {result.files:,} files, {size(result.logical_bytes)}; read {result.files_read:,} files "
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
            lines.append(escape(f"Area:   {entry.area} · {entry.files:,} files · {size(entry.logical_bytes)}"))
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
    out.print(escape(f"Area:   {info.area} ({info.area_kind}: {info.location} on {info.host})"))
    out.print(f"Files:  {info.files:,} files, {result.directories:,} directories, {result.symlinks:,} symlinks, {result.other:,} other")
    out.print(f"Size:   {size(info.logical_bytes)} logical, {size(result.stored_bytes)} stored, {size(info.added_bytes)} added by this entry")
    if info.skipped:
        out.print(escape(f"Skipped: {', '.join(info.skipped)}"))
    out.print("")
    for line in entry.message.rstrip().splitlines():
        out.print("    " + escape(line))


def checkout_result(result: api.CheckoutResult) -> None:
    counts = result.counts
    where = f"area {result.area}" if result.area else result.target
    out.print(
        f"checked out {result.entry[:12]} into {escape(where)}: {counts.files_written:,} files written "
        f"({size(counts.bytes_written)}), {counts.metadata_only:,} metadata updates, {counts.removed:,} removed"
    )
    if result.area:
        out.print(f"area {escape(result.area)} is " + (f"on branch {result.branch}" if result.branch else f"detached at {result.entry[:12]}"))
    for line in result.not_reproduced:
        warning(f"not reproduced: {line}")


def diff_name_status(changes: list[api.DiffEntry]) -> None:
    for change in changes:
        out.print(f"{change.status}\t{escape(change.path)}")


def fsck_report(report: api.FsckReport) -> None:
    out.print(f"checked {report.entries:,} entries, {report.packs:,} packs, {report.blobs:,} objects ({size(report.bytes)})")
    for problem in report.problems:
        out.print(f"[red]damage:[/] {escape(problem)}")
    for note in report.warnings:
        out.print(f"[yellow]warning:[/] {escape(note)}")
    for damaged in report.damaged:
        out.print(f"[red]entry {damaged.entry[:12]}[/] ({escape(damaged.message)}) is damaged:")
        for path, reason in damaged.paths:
            out.print(f"  {escape(path)}: {escape(reason)}")
    out.print("no damage found" if report.ok else "[bold red]the repository is damaged[/]")


def gc_result(stats: GcStats) -> None:
    out.print(
        f"freed {size(stats.bytes_freed)} ({stats.bytes_freed:,} bytes): {stats.blobs_removed:,} unreachable objects removed, "
        f"{stats.packs_deleted} packs deleted, {stats.packs_rewritten} rewritten; {stats.packs_after} packs, "
        f"{size(stats.bytes_after)} remain"
    )
