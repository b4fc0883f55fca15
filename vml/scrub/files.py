"""One file through the scrubber: its path rule (drop, redact with a format-aware redactor,
scan, keep), then the content scan of what is kept. A file without a finding comes out as
the same node, its chunks untouched; a file with one is rewritten or dropped."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from vml.objects.manifest import Node
from vml.objects.store import ChunkStore
from vml.objects.walk import read_content
from vml.pathnames import quote_path, unquote_path
from vml.scrub.cache import CleanCache
from vml.scrub.packages import PackageFiles
from vml.scrub.patterns import ASSIGNMENT, BLOCK, CONTENT, INLINE_PASSWORD, TEXT, content_matcher, is_secret_assignment
from vml.scrub.redactors import PLACEHOLDER, REDACTORS
from vml.scrub.report import DROP, DROP_LINES, REDACT, Finding, mask
from vml.scrub.rules import Allowlist, Decision, Rule, RuleSet

REDACT_LIMIT = 16 << 20  # a file a redactor rewrites is read whole; larger ones are dropped
REWRITE_LIMIT = 512 << 20  # a file with a finding is rewritten in memory; larger ones are dropped
CONFIG_LIMIT = 1 << 20  # configuration files are searched for `key = secret` lines up to this size
GZIP_LIMIT = 64 << 20  # decompressed bytes searched inside a gzip file
TEXT_PROBE = 8192
CONFIG_SUFFIXES = (b".conf", b".cfg", b".ini", b".env", b".yaml", b".yml", b".toml", b".json", b".properties", b".xml", b".sh",
                   b".rc", b".cnf", b".config", b".settings", b".credentials", b".txt")
BLOCK_END = {
    "private-key": re.compile(rb"-----END[A-Z0-9 ]{0,40}-----|\n\s*\n"),
    "putty-key": re.compile(rb"Private-MAC:[ \t]*[0-9a-fA-F]+|\n\s*\n"),
}
BLOCK_REACH = 64 * 1024


@dataclass(slots=True)
class Outcome:
    content: bytes | None  # the new content; None: the node stays as it is (or is dropped)
    dropped: bool = False
    findings: list[Finding] = field(default_factory=list)
    pristine: bool = False  # kept with its matches: byte for byte its package's


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    pattern: str
    category: str
    block: bool


def is_text(data: bytes | memoryview) -> bool:
    return b"\0" not in bytes(data[:TEXT_PROBE])


def is_config(path: bytes, rule: Rule | None) -> bool:
    """Whether `key = secret` lines are looked for in the file: configuration, not package trees."""
    if rule is not None:
        return rule.category != "packages"
    return path.startswith(b"etc/") or path.endswith(CONFIG_SUFFIXES) or b"/." in b"/" + path  # a dotfile, or in a dot-directory


class FileScrubber:
    def __init__(self, rules: RuleSet, store: ChunkStore, packages: PackageFiles | None = None, allowlist: Allowlist | None = None,
                 cache: CleanCache | None = None):
        self.rules = rules
        self.cache = cache or CleanCache(None, b"")
        self.allowlist = allowlist or Allowlist([], b"")
        self.store = store
        self.matcher = content_matcher()
        self.packages = packages
        self.pristine: list[str] = []  # files with a finding kept because they are exactly their package's

    def decide(self, path: bytes) -> Decision:
        return self.rules.decide(path)

    def drop_finding(self, path: bytes, decision: Decision) -> Finding | None:
        """Why a path is dropped whatever it holds (its rule, or its name), None if it is not."""
        rule = decision.rule
        if rule is not None and rule.action == "drop":
            return Finding(quote_path(b"/" + path), DROP, rule.id, rule.category)
        if rule is None and decision.credential_name:
            return Finding(quote_path(b"/" + path), DROP, "credential-name", "unreviewed", reviewed=False)
        return None

    def regular(self, path: bytes, node: Node, decision: Decision) -> Outcome:
        rule = decision.rule
        dropped = self.drop_finding(path, decision)
        if dropped is not None:
            return Outcome(None, True, [dropped])
        if rule is not None and rule.action == "redact":
            return self._redacted(path, quote_path(b"/" + path), node, rule)
        if rule is not None and rule.action == "keep" and not rule.scan:
            return Outcome(None)
        key = self.cache.key(path, node) if node.hardlink is None else None
        if key is not None and self.cache.hit(key):
            return Outcome(None)
        outcome = self._scanned(path, node, rule)
        if key is not None and not outcome.findings and not outcome.dropped and outcome.content is None and not outcome.pristine:
            self.cache.add(key)
        return outcome

    def _scanned(self, path: bytes, node: Node, rule: Rule | None) -> Outcome:
        config = is_config(path, rule) and node.size <= CONFIG_LIMIT
        hit, text, gzipped = self._prefilter(node)
        if not hit and not (config and text) and not gzipped:
            return Outcome(None)
        shown = quote_path(b"/" + path)
        if node.size > REWRITE_LIMIT:
            return Outcome(None, True, [Finding(shown, DROP, "too-large-to-redact", "unreviewed", reviewed=False)])
        data = read_content(self.store, node)
        outcome = self.scan(shown, data, config, reviewed=rule is not None and rule.category != "packages")
        if outcome.findings and self.packages is not None and self.packages.pristine(path, data):
            self.pristine.append(shown)
            return Outcome(None, pristine=True)
        return outcome

    def _redacted(self, path: bytes, shown: str, node: Node, rule: Rule) -> Outcome:
        if node.size > REDACT_LIMIT:
            return Outcome(None, True, [Finding(shown, DROP, rule.id, rule.category)])
        assert rule.redactor is not None
        data = read_content(self.store, node)
        new, lines = REDACTORS[rule.redactor](data)
        findings = [Finding(shown, DROP_LINES if rule.redactor == "history-line" else REDACT, rule.id, rule.category, tuple(lines))] if lines else []
        if rule.scan:
            scanned = self.scan(shown, new, True, reviewed=True)
            if scanned.dropped:
                return scanned
            findings += scanned.findings
            new = scanned.content if scanned.content is not None else new
        return Outcome(new if new != data else None, False, findings)

    def _prefilter(self, node: Node) -> tuple[bool, bool, bool]:
        """Whether any content pattern may match (across chunk boundaries), whether the file
        is text, and whether it is gzip-compressed."""
        stream = self.matcher.stream()
        text, gzipped = True, False
        for number, chunk_id in enumerate(node.chunk_ids()):
            data = self.store.get(chunk_id)
            if number == 0:
                text, gzipped = is_text(data), _gzip_head(data)
            stream.feed(data)
        found = stream.close()
        return any(text or CONTENT[pattern].scope != TEXT for pattern, _end in found), text, gzipped

    def scan(self, shown: str, data: bytes, config: bool, *, reviewed: bool) -> Outcome:
        """The content scan of one file's bytes: spans found are replaced (text: by the
        placeholder, a key block by one placeholder line; binary: by as many filler bytes);
        a gzip file with a finding inside is dropped."""
        if _gzip_head(data):
            inner = _gunzip(data)
            if inner is None:
                return Outcome(None)
            # A compressed log is opaque to a review: every `key = secret` line counts in it.
            found = self.scan(shown, inner, True, reviewed=reviewed)
            if found.findings:
                return Outcome(None, True, [Finding(shown, DROP, found.findings[0].rule, found.findings[0].category, reviewed=reviewed)])
            return Outcome(None)
        text = is_text(data)
        path = unquote_path(shown).lstrip(b"/")
        spans = []
        for span in self.spans(data, text, config):
            fingerprint = self.allowlist.fingerprint(data[span.start : span.end])
            if not self.allowlist.permits(path, span.pattern, fingerprint):
                spans.append((span, fingerprint))
        if not spans:
            return Outcome(None)
        new = _replace(data, [span for span, _ in spans], text)
        findings = [Finding(shown, REDACT, span.pattern, span.category, (data.count(b"\n", 0, span.start) + 1,),
                            _preview(data, span), reviewed, fingerprint) for span, fingerprint in spans]
        return Outcome(new, False, findings)

    def spans(self, data: bytes, text: bool, config: bool) -> list[Span]:
        spans = []
        for number, ends in _by_pattern(self.matcher.ends(data)).items():
            pattern = CONTENT[number]
            if pattern.scope == TEXT and not text:
                continue
            for start, end in _windows(ends, BLOCK_REACH if pattern.kind == BLOCK else 4096):
                for match in pattern.compiled.finditer(data, start, end):
                    spans.append(_span(data, pattern.id, pattern.category, pattern.kind == BLOCK, match))
        if config and text:
            for assignment in (ASSIGNMENT, INLINE_PASSWORD):
                for match in assignment.finditer(data):
                    if is_secret_assignment(match) and PLACEHOLDER not in match.group("secret"):
                        spans.append(Span(*match.span("secret"), "secret-assignment", "tokens", False))
        return _merge(spans)

    def text(self, shown: str, data: bytes) -> Outcome:
        """A small text beside the tree (an entry's env/ files, its domain definition)."""
        return self.scan(shown, data, True, reviewed=True)


def _span(data: bytes, pattern: str, category: str, block: bool, match: re.Match[bytes]) -> Span:
    if not block:
        start, end = match.span("secret") if "secret" in match.re.groupindex else match.span()
        return Span(start, end, pattern, category, False)
    ending = BLOCK_END[pattern].search(data, match.end(), match.end() + BLOCK_REACH)
    return Span(match.start(), ending.end() if ending else min(len(data), match.end() + BLOCK_REACH), pattern, category, True)


def _by_pattern(ends: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for number, end in ends:
        grouped.setdefault(number, []).append(end)
    return grouped


def _windows(ends: list[int], reach: int) -> list[tuple[int, int]]:
    """Merged (start, end) ranges of the text before each match end where the match lies."""
    windows: list[list[int]] = []
    for end in sorted(ends):
        start = max(0, end - reach)
        if windows and start <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], end)
        else:
            windows.append([start, end])
    return [(start, end) for start, end in windows]


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in sorted(set(spans), key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            if span.end > last.end:
                merged[-1] = Span(last.start, span.end, last.pattern, last.category, last.block or span.block)
            continue
        merged.append(span)
    return merged


def _replace(data: bytes, spans: list[Span], text: bool) -> bytes:
    pieces, position = [], 0
    for span in spans:
        pieces.append(data[position : span.start])
        if text:
            pieces.append(PLACEHOLDER + b":" + span.pattern.encode())
        else:
            filler = PLACEHOLDER + b"-"
            pieces.append((filler * ((span.end - span.start) // len(filler) + 1))[: span.end - span.start])
        position = span.end
    pieces.append(data[position:])
    return b"".join(pieces)


def _preview(data: bytes, span: Span) -> str:
    if span.block:
        return data[span.start : data.find(b"\n", span.start, span.start + 80) if b"\n" in data[span.start : span.start + 80]
                    else span.start + 40].decode("ascii", "replace")
    return mask(data[span.start : span.end])


def _gzip_head(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def _gunzip(data: bytes) -> bytes | None:
    """The decompressed content of a gzip file (at most GZIP_LIMIT bytes), None if it is not one."""
    try:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return decompressor.decompress(data, GZIP_LIMIT)
    except (zlib.error, gzip.BadGzipFile, EOFError):
        return None
