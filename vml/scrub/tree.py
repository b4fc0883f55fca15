"""A stored tree streamed through the scrubber into a new tree: every listing written anew
from the scrubbed nodes (an unchanged directory gets its old id back: listings are
canonical), every rewritten file chunked anew. Nothing of the old tree is edited, so what
a public entry reaches is only what came out of the scrubber."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from vml.areas.capture.sink import Sink
from vml.errors import CorruptObject
from vml.objects.chunker import cut_buffer
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_SYMLINK, Listing, Node, Totals, encode_listing, encode_root
from vml.objects.store import ChunkStore
from vml.objects.walk import hardlink_groups, node_at, read_content, root_node
from vml.pathnames import quote_path
from vml.scrub.files import CONFIG_LIMIT, FileScrubber, Outcome, is_config
from vml.scrub.report import DROP, REDACT, Dangling, Finding, ScrubReport
from vml.scrub.rules import Decision, RuleSet, homes_from_passwd, load_rules, rule_set


@dataclass(slots=True)
class ScrubProgress:
    files: int = 0
    bytes: int = 0


Progress = Callable[[ScrubProgress], None] | None


@dataclass(slots=True)
class ScrubbedTree:
    root_id: bytes
    totals: Totals
    report: ScrubReport


def rules_for(load: Callable[..., Listing], store, root_id: bytes, rules_file: str | None) -> RuleSet:
    """The rules in force for a tree: the homes are those its own etc/passwd names."""
    passwd = node_at(load, root_id, b"etc/passwd")
    content = read_content(store, passwd) if passwd is not None and passwd.kind == KIND_FILE and passwd.size < (1 << 20) else None
    return rule_set(tuple(load_rules(rules_file)), tuple(homes_from_passwd(content)))


class TreeScrubber:
    def __init__(self, load: Callable[..., Listing], sink: Sink, files: FileScrubber, progress: Progress = None,
                 copy_from: ChunkStore | None = None):
        self.load = load
        self.copy_from = copy_from  # the store the tree is in, when it is not the sink's: kept files' chunks are copied
        self.sink = sink
        self.files = files
        self.report = ScrubReport()
        self.progress = progress
        self.counts = ScrubProgress()
        self.dropped: set[bytes] = set()
        self.rewritten: dict[bytes, Node] = {}  # a hardlink group's first path -> its scrubbed node
        self.group_drop: set[bytes] = set()  # paths of hardlink groups dropped whole
        self.group_decision: dict[bytes, Decision] = {}  # a group's first path -> the redacting rule of another of its names
        self.configs: list[tuple[bytes, Node, bytes | None]] = []  # kept configuration files: where dangling references are

    def scrub(self, root_id: bytes) -> ScrubbedTree:
        top = root_node(self.load, root_id)
        groups = hardlink_groups(self.load, root_id)
        for group in groups:  # one inode, the strictest of its names' rules: any dropped drops all, any redactor applies
            decisions = [self.files.decide(path) for path in group]
            if any(self.files.drop_finding(path, decision) is not None for path, decision in zip(group, decisions)):
                self.group_drop.update(group)
            else:
                redacting = [decision for decision in decisions if decision.rule is not None and decision.rule.action == "redact"]
                if redacting:
                    self.group_decision[group[0]] = redacting[0]
        listing_id, totals = self._directory(b"", _listing_of(top, b"/"))
        kept_groups = [[path for path in group if path not in self.dropped] for group in groups]
        links = [group for group in kept_groups if len(group) >= 2]
        top = dataclasses.replace(top, name=b"", tree=listing_id)
        root = self.sink.listing(encode_root(top, totals, links))
        self._find_dangling()
        return ScrubbedTree(root, totals, self.report)

    def _directory(self, prefix: bytes, listing_id: bytes) -> tuple[bytes, Totals]:
        nodes, totals = [], Totals()
        for node in self.load(listing_id).nodes:
            path = prefix + b"/" + node.name if prefix else node.name
            node = self._xattrs(path, node)
            if node.kind == KIND_DIR:
                child_id, child_totals = self._directory(path, _listing_of(node, path))
                kept: Node | None = dataclasses.replace(node, tree=child_id)
                totals.add(child_totals)
            elif node.kind == KIND_SYMLINK:
                kept = self._symlink(path, node)
            elif node.kind == KIND_FILE:
                kept = self._file(path, node)
            else:
                kept = node  # a FIFO or a device: no content
            if kept is None:
                self.dropped.add(path)
                continue
            nodes.append(kept)
            totals.add_node(kept)
        return self.sink.listing(encode_listing(nodes, totals)), totals

    def _file(self, path: bytes, node: Node) -> Node | None:
        self.counts.files += 1
        self.counts.bytes += node.size
        if self.progress is not None and self.counts.files % 256 == 0:
            self.progress(self.counts)
        if path in self.group_drop:
            self.report.findings.append(self.files.drop_finding(path, self.files.decide(path))
                                        or Finding(quote_path(b"/" + path), DROP, "hardlink-of-dropped", "unreviewed", reviewed=False))
            return None
        if node.hardlink is not None and node.hardlink != path:  # another name of an inode scrubbed already
            first = self.rewritten.get(node.hardlink)
            return node if first is None else dataclasses.replace(first, name=node.name, hardlink=node.hardlink)
        decision = self.group_decision.get(path) or self.files.decide(path)
        outcome = self.files.regular(path, node, decision)
        self.report.findings.extend(outcome.findings)
        if outcome.dropped:
            return None
        if outcome.content is None:
            kept = node
            if self.copy_from is not None:
                for chunk_id in node.chunk_ids():
                    self.sink.chunk(self.copy_from.get(chunk_id))
        else:
            kept = self.rewritten[path] = self._rewrite(node, outcome)
        if is_config(path, decision.rule) and kept.size <= CONFIG_LIMIT:
            self.configs.append((path, kept, outcome.content))
        return kept

    def _rewrite(self, node: Node, outcome: Outcome) -> Node:
        assert outcome.content is not None
        chunks = b"".join(bytes(self.sink.chunk(piece)) for piece in cut_buffer(outcome.content)) if outcome.content else b""
        return dataclasses.replace(node, size=len(outcome.content), chunks=chunks, extents=None)

    def _symlink(self, path: bytes, node: Node) -> Node | None:
        target = node.target or b""
        if self.files.matcher.matching(target):
            self.report.findings.append(Finding(quote_path(b"/" + path), DROP, "symlink-target", "tokens", reviewed=False))
            return None
        return node

    def _xattrs(self, path: bytes, node: Node) -> Node:
        if not node.xattrs:
            return node
        kept = tuple((name, value) for name, value in node.xattrs if not self.files.matcher.matching(value))
        if len(kept) == len(node.xattrs):
            return node
        self.report.findings.append(Finding(quote_path(b"/" + path), REDACT, "xattr", "tokens", reviewed=False))
        return dataclasses.replace(node, xattrs=kept)


    def _find_dangling(self) -> None:
        """Lines of kept configuration files that name a dropped file (IdentityFile,
        credentials=, X509_USER_PROXY...): they will point at nothing."""
        names: dict[bytes, bytes] = {}
        for path in self.dropped:
            names[b"/" + path] = path
            for home in self.files.rules.homes:
                if path.startswith(home + b"/"):
                    names[b"~/" + path[len(home) + 1 :]] = path
        if not names:
            return
        finder = re.compile(b"|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)))
        for path, node, content in self.configs:
            data = content if content is not None else read_content(self.files.store, node)
            for match in finder.finditer(data):
                self.report.dangling.append(Dangling(quote_path(b"/" + path), data.count(b"\n", 0, match.start()) + 1,
                                                     quote_path(b"/" + names[match.group()])))


def _listing_of(node: Node, path: bytes) -> bytes:
    if node.tree is None:
        raise CorruptObject(f"damaged listing: the directory {quote_path(path)} names no listing of its own")
    return node.tree
