"""Paths, which are bytes: shown quoted as git quotes them in text and losslessly in JSON and
entry.toml, and read as users type them on the command line."""

from __future__ import annotations

import base64
import os
import unicodedata

from vml.errors import UsageError

_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0B: "\\v", 0x0C: "\\f", 0x0D: "\\r",
            0x22: '\\"', 0x5C: "\\\\"}
# Characters that print as nothing, or reorder what follows (U+202E...): quoted like control bytes.
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def quote_path(path: bytes) -> str:
    """A path for a line of text, as git prints it (quote_c_style): as is when it is plain,
    else between double quotes with C escapes (\\t, \\n, \\", \\\\) and octal (\\377) for every
    byte that is a control character, DEL, or not valid UTF-8. Valid UTF-8 letters are kept
    as they are (git with core.quotePath=false), except invisible ones (format characters
    such as U+202E), which are octal too. So one path is one unambiguous token on a line."""
    text = path.decode("utf-8", "surrogateescape")
    if all(" " <= char <= "~" and char not in '"\\' for char in text):
        return text  # the common case: printable ASCII
    pieces = []
    quoted = False
    for char in text:
        code = ord(char)
        if code in _ESCAPES:
            pieces.append(_ESCAPES[code])
            quoted = True
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            pieces.append(f"\\{code - 0xDC00:03o}")
            quoted = True
        elif code < 0x20 or code == 0x7F or (code > 0x7F and unicodedata.category(char) in _HIDDEN_CATEGORIES):
            pieces.append("".join(f"\\{byte:03o}" for byte in char.encode("utf-8", "surrogatepass")))
            quoted = True
        else:
            pieces.append(char)
    body = "".join(pieces)
    return f'"{body}"' if quoted else body


def unquote_path(text: str) -> bytes:
    """The bytes `quote_path` shows as `text` (for tests and for scripts that read vml's
    text output)."""
    if not (len(text) >= 2 and text.startswith('"') and text.endswith('"')):
        return text.encode("utf-8", "surrogateescape")
    reverse = {escape[1]: chr(code) for code, escape in _ESCAPES.items()}
    out = bytearray()
    body = text[1:-1]
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            out += char.encode("utf-8", "surrogateescape")
            index += 1
        elif body[index + 1] in reverse:
            out += reverse[body[index + 1]].encode()
            index += 2
        else:
            out.append(int(body[index + 1 : index + 4], 8))
            index += 4
    return bytes(out)


def lossless_text(path: bytes) -> str:
    """The path as a Python string that turns back into the same bytes (os.fsencode): bytes
    that are not UTF-8 become lone surrogates, which JSON shows as \\udcXX escapes."""
    return path.decode("utf-8", "surrogateescape")


def path_bytes(path: bytes) -> str | None:
    """Base64 of the path's bytes when they are not valid UTF-8 (where a JSON string alone
    cannot carry them to every reader); None when `path` as text is exact."""
    try:
        path.decode("utf-8")
        return None
    except UnicodeDecodeError:
        return base64.b64encode(path).decode("ascii")


def parse_paths(paths: tuple[str, ...] | list[str]) -> list[bytes]:
    """Paths as users type them (relative to the area's top, '/' allowed in front) as the
    '/'-separated relative bytes manifests use; b"" for the whole tree."""
    parsed = []
    for text in paths:
        parts = [p for p in os.fsencode(text).split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            raise UsageError(f"path {text!r} goes up with '..'; give paths from the area's top")
        parsed.append(b"/".join(parts))
    return parsed
