"""Format-aware redactors: each takes a file's bytes and gives them back with the secrets
out and the format still valid (a shadow file still has its users, fstab its six fields,
JSON still parses), and how many lines it changed or removed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from vml.scrub.patterns import ASSIGNMENT, HISTORY, SPACED_ASSIGNMENT, content_matcher, is_secret_assignment, is_secret_name

PLACEHOLDER = b"VML-REDACTED"

Redactor = Callable[[bytes], tuple[bytes, list[int]]]  # new content, numbers of the lines changed


def shadow(data: bytes) -> tuple[bytes, list[int]]:
    """/etc/shadow and gshadow: the password field of each user becomes `!` (locked);
    users, ids and ageing stay. A field already locked without a hash (`*`, `!`) stays."""
    lines, changed = data.split(b"\n"), []
    for number, line in enumerate(lines, 1):
        fields = line.split(b":")
        if len(fields) >= 2 and fields[1] not in (b"", b"*", b"!", b"!!", b"!*", b"x"):
            fields[1] = b"!"
            lines[number - 1] = b":".join(fields)
            changed.append(number)
    return b"\n".join(lines), changed


MOUNT_SECRET = re.compile(rb"(?i)^(password|pass|passwd|username|user)=")


def mount_options(data: bytes) -> tuple[bytes, list[int]]:
    """fstab and autofs maps: password=, pass=, username= options removed from option lists
    (credentials=FILE stays); an option list left empty becomes `defaults`."""
    lines, changed = data.split(b"\n"), []
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith(b"#"):
            continue
        pieces = re.split(rb"(\s+)", line)
        touched = False
        for index, piece in enumerate(pieces):
            if b"=" not in piece or piece.isspace():
                continue
            dash = piece.startswith(b"-")
            options = (piece[1:] if dash else piece).split(b",")
            kept = [option for option in options if not MOUNT_SECRET.match(option)]
            if len(kept) != len(options):
                touched = True
                pieces[index] = (b"-" if dash else b"") + (b",".join(kept) or b"defaults")
        if touched:
            lines[number - 1] = b"".join(pieces)
            changed.append(number)
    return b"\n".join(lines), changed


def assignments(data: bytes) -> tuple[bytes, list[int]]:
    """INI, keyfile, YAML and netrc-like lines whose key names a secret: the value becomes
    the placeholder, the key and the quotes stay."""
    return _replace_values(ASSIGNMENT, data)


def spaced(data: bytes) -> tuple[bytes, list[int]]:
    """nslcd.conf, ldap.conf: `bindpw SECRET`, key and value separated by whitespace."""
    return _replace_values(SPACED_ASSIGNMENT, data)


def _replace_values(pattern: re.Pattern[bytes], data: bytes) -> tuple[bytes, list[int]]:
    changed: set[int] = set()

    def replace(match: re.Match[bytes]) -> bytes:
        if not is_secret_assignment(match):
            return match.group(0)
        changed.add(data.count(b"\n", 0, match.start()) + 1)
        start, end = match.span("secret")
        return match.group(0)[: start - match.start()] + PLACEHOLDER + match.group(0)[end - match.start():]

    return pattern.sub(replace, data), sorted(changed)


ENV_LINE = re.compile(rb"^(?P<head>\s*(?:export\s+|declare\s+-x\s+|setenv\s+|Environment=[\"']?)?)(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>=|\s+)(?P<value>.*)$")


INLINE_ASSIGNMENT = re.compile(rb"(?<![A-Za-z0-9_$])(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>\"[^\"]*\"|'[^']*'|[^\s;|&]+)")


def environment(data: bytes) -> tuple[bytes, list[int]]:
    """Shell profiles, environment files, unit files, crontabs: a variable whose name says it
    holds a secret keeps its name with an empty value, at the start of a line (export X=...)
    or inside one (a crontab's `PGPASSWORD=... pg_dump`)."""
    lines, changed = data.split(b"\n"), []
    for number, line in enumerate(lines, 1):
        new = _blank_line(line)
        new = INLINE_ASSIGNMENT.sub(lambda m: m.group("name") + b"=" + (b'""' if m.group("value")[:1] in b"\"'" else b"")
                                    if is_secret_name(m.group("name")) and m.group("value").strip(b"\"'") else m.group(0), new)
        if new != line:
            lines[number - 1] = new
            changed.append(number)
    return b"\n".join(lines), changed


def _blank_line(line: bytes) -> bytes:
    match = ENV_LINE.match(line)
    if match is None or not match.group("value").strip(b"\"' ") or not is_secret_name(match.group("name")):
        return line
    if match.group("eq") != b"=" and not match.group("head").strip().startswith(b"setenv"):
        return line
    closing = b'"' if match.group("head").endswith(b'"') else b""
    return match.group("head") + match.group("name") + match.group("eq") + (b'""' if match.group("value").startswith(b'"') else b"") + closing


def history(data: bytes) -> tuple[bytes, list[int]]:
    """Shell and REPL history: every line with a password or token form goes, whole."""
    matcher = content_matcher()
    kept, dropped = [], []
    for number, line in enumerate(data.split(b"\n"), 1):
        if HISTORY.search(line) or matcher.matching(line):
            dropped.append(number)
        else:
            kept.append(line)
    return b"\n".join(kept), dropped


def json_keys(data: bytes) -> tuple[bytes, list[int]]:
    """JSON (docker's config.json): string values under keys that name a secret (auth,
    identitytoken, password, token...) become the placeholder; other keys stay. Falls back to
    line assignments when the file does not parse."""
    try:
        document = json.loads(data)
    except ValueError:
        return assignments(data)
    replaced = 0

    def clean(value):
        nonlocal replaced
        if isinstance(value, list):
            return [clean(item) for item in value]
        if not isinstance(value, dict):
            return value
        cleaned = {}
        for key, item in value.items():
            if isinstance(item, str) and item and _json_secret_key(key):
                cleaned[key] = PLACEHOLDER.decode()
                replaced += 1
            else:
                cleaned[key] = clean(item)
        return cleaned

    cleaned = clean(document)
    if not replaced:
        return data, []
    text = json.dumps(cleaned, indent=1 if b"\n" in data.strip() else None, ensure_ascii=False).encode()
    return text + (b"\n" if data.endswith(b"\n") else b""), [1]


def _json_secret_key(key: str) -> bool:
    return key.lower() in ("auth", "identitytoken", "registrytoken") or is_secret_name(key.encode())


XML_ELEMENT = re.compile(rb"(?is)(<(?P<tag>password|passphrase|privatekey|secret|token)>)(?P<secret>.*?)(</(?P=tag)>)")
XML_ATTRIBUTE = re.compile(rb"(?i)(\b(passwd|password|secret)=)(['\"])(?P<secret>.*?)\3")


def xml_keys(data: bytes) -> tuple[bytes, list[int]]:
    """XML (Maven settings, a libvirt domain's graphics password): secret elements and
    attributes keep their names, their values become the placeholder."""
    changed: set[int] = set()

    def element(match: re.Match[bytes]) -> bytes:
        changed.add(data.count(b"\n", 0, match.start()) + 1)
        return match.group(1) + PLACEHOLDER + match.group(4)

    def attribute(match: re.Match[bytes]) -> bytes:
        changed.add(data.count(b"\n", 0, match.start()) + 1)
        return match.group(1) + match.group(3) + PLACEHOLDER + match.group(3)

    return XML_ATTRIBUTE.sub(attribute, XML_ELEMENT.sub(element, data)), sorted(changed)


NETRC_SECRET = re.compile(rb"(\b(?:password|account)\s+)(\S+)")


def netrc(data: bytes) -> tuple[bytes, list[int]]:
    changed = sorted({data.count(b"\n", 0, m.start()) + 1 for m in NETRC_SECRET.finditer(data)})
    return NETRC_SECRET.sub(lambda m: m.group(1) + PLACEHOLDER, data), changed


def kickstart(data: bytes) -> tuple[bytes, list[int]]:
    """Kickstart files: rootpw becomes `rootpw --lock`; --password= options go."""
    lines, changed = data.split(b"\n"), []
    for number, line in enumerate(lines, 1):
        new = b"rootpw --lock" if line.startswith(b"rootpw") else re.sub(rb"\s--password=\S+", b"", line)
        if new != line:
            lines[number - 1] = new
            changed.append(number)
    return b"\n".join(lines), changed


def empty(data: bytes) -> tuple[bytes, list[int]]:
    """/etc/machine-id: emptied, so the guest makes a new one at boot."""
    return b"", [1] if data else []


REDACTORS: dict[str, Redactor] = {
    "shadow": shadow, "mount-opts": mount_options, "ini-keys": assignments, "space-keys": spaced, "env-assign": environment,
    "history-line": history,
    "json-keys": json_keys, "xml-keys": xml_keys, "netrc": netrc, "kickstart": kickstart, "empty": empty,
}
