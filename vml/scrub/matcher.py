"""Many regular expressions matched in one pass: Hyperscan's one home (via the `hyperscan`
binding). Used for the scrubber's path rules and its content scan, where a Python `re`
alternation of the same patterns runs about 100 times slower (`benchmarks/scrub.py`).

Hyperscan reports which pattern matched and where the match ends (asking for the start
too makes the patterns with long bounded repeats too large to compile); the caller finds
the exact span with Python's `re` in a window before that end.
"""

from __future__ import annotations

from collections.abc import Iterable

import hyperscan


class Matcher:
    """A set of patterns (bytes, Hyperscan/PCRE syntax), numbered in the order given."""

    def __init__(self, patterns: Iterable[bytes], *, caseless: Iterable[bool] | None = None, single: bool = False):
        self.patterns = list(patterns)
        flags_each = [hyperscan.HS_FLAG_DOTALL | (hyperscan.HS_FLAG_SINGLEMATCH if single else 0)] * len(self.patterns)
        if caseless is not None:
            flags_each = [flags | (hyperscan.HS_FLAG_CASELESS if nocase else 0) for flags, nocase in zip(flags_each, caseless)]
        self._flags = flags_each
        self._block = _compile(self.patterns, flags_each, hyperscan.HS_MODE_BLOCK) if self.patterns else None
        self._stream = None  # compiled at the first stream: path rules never need one

    def matching(self, data: bytes) -> set[int]:
        """The numbers of the patterns that match somewhere in `data`."""
        found: set[int] = set()
        if self._block is not None and data:
            self._block.scan(data, match_event_handler=lambda number, _start, _end, _flags, _context: found.add(number))
        return found

    def ends(self, data: bytes) -> list[tuple[int, int]]:
        """(pattern number, end offset) of every match in `data`."""
        found: list[tuple[int, int]] = []
        if self._block is not None and data:
            self._block.scan(data, match_event_handler=lambda number, _start, end, _flags, _context: found.append((number, end)))
        return found

    def stream(self) -> MatchStream:
        if self._stream is None and self.patterns:
            self._stream = _compile(self.patterns, self._flags, hyperscan.HS_MODE_STREAM)
        return MatchStream(self)


class MatchStream:
    """One stream of data given in pieces (a file's chunks): matches across the pieces'
    boundaries are found, with end offsets counted from the stream's start."""

    def __init__(self, matcher: Matcher):
        self.found: list[tuple[int, int]] = []
        self._context = None
        if matcher._stream is not None:
            self._context = matcher._stream.stream(match_event_handler=self._found)
            self._context.__enter__()

    def _found(self, number: int, _start: int, end: int, _flags: int, _context: object) -> None:
        self.found.append((number, end))

    def feed(self, data: bytes | memoryview) -> None:
        if self._context is not None and len(data):
            # The binding needs the handler again at each scan (without it, 0.9.1 crashes).
            self._context.scan(bytes(data), match_event_handler=self._found)

    def close(self) -> list[tuple[int, int]]:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None
        return self.found


def _compile(patterns: list[bytes], flags: list[int], mode: int):
    database = hyperscan.Database(mode=mode)
    database.compile(expressions=patterns, ids=list(range(len(patterns))), elements=len(patterns), flags=flags)
    return database
