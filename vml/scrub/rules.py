"""The scrubber's path rules: built-in (builtin.toml beside this module) and a user's TOML
file, which comes first; each path's decision is the first rule whose globs match it.

A glob is matched against the path from the area's top (no leading slash in the tree):
`/x` anchors at the top, `**` is any number of directories, `*` and `?` stay within a name,
a leading `~/` is every home directory the guest's own /etc/passwd names (root's too, and
homes outside /home), and a glob with none of these matches a name at any depth.
"""

from __future__ import annotations

import functools
import hmac
import re
import tomllib
from dataclasses import dataclass
from importlib import resources

from vml.errors import UsageError
from vml.scrub.matcher import Matcher

ACTIONS = ("drop", "redact", "scan", "keep")
REDACTORS = ("shadow", "mount-opts", "ini-keys", "space-keys", "env-assign", "history-line", "json-keys", "xml-keys", "netrc", "kickstart", "empty")
# Names that look like credentials: without a rule that covers them, a public entry leaves
# them out (fail closed) and says so. Source and documentation files are not credentials.
CREDENTIAL_NAME = re.compile(rb"(?i)(token|cred|secret|passw|\.key$|\.p12$|\.pfx$|\.keytab$|\.jks$|\.kdbx$|\.ovpn$)")
CODE_SUFFIX = re.compile(rb"(?i)\.(py|pyc|pyi|c|h|cc|cpp|hpp|cxx|js|mjs|ts|java|class|go|rs|rb|pl|pm|html?|css|md|rst|txt\.gz|"
                         rb"[1-9]|[1-9]\.gz|so|mo|po|svg|png|tex)$")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    paths: tuple[str, ...]
    action: str
    category: str
    redactor: str | None = None
    scan: bool = True  # whether a kept or redacted file's content is scanned afterwards
    origin: str = "built-in"


@dataclass(frozen=True, slots=True)
class Allow:
    """One finding a user reviewed and keeps: where (a glob), which pattern, and a salted
    fingerprint of the value (HMAC-SHA256 keyed by the repository's own salt, which stays in
    its git config and is never pushed): never the value, never a plain hash of it."""

    path: str
    rule: str
    fingerprint: str


class Allowlist:
    def __init__(self, entries: list[Allow], salt: bytes):
        self.salt = salt
        self._entries = [(re.compile(b"|".join(glob_regexes(entry.path, [])), re.DOTALL), entry) for entry in entries]

    def fingerprint(self, value: bytes) -> str:
        return "hmac-sha256:" + hmac.new(self.salt, value, "sha256").hexdigest()[:32]

    def permits(self, path: bytes, rule: str, fingerprint: str) -> bool:
        return any(entry.rule == rule and hmac.compare_digest(entry.fingerprint, fingerprint) and regex.match(path)
                   for regex, entry in self._entries)


@dataclass(frozen=True, slots=True)
class Decision:
    rule: Rule | None  # None: no rule names the path (content scan only; fail closed on its name)
    credential_name: bool = False


class RuleSet:
    """The rules in force, with the homes of one tree: `decide(path)` for each path."""

    def __init__(self, rules: list[Rule], homes: list[bytes]):
        self.rules = rules
        self.homes = homes
        patterns: list[bytes] = []
        owners: list[int] = []
        for number, rule in enumerate(rules):
            for glob in rule.paths:
                for regex in glob_regexes(glob, homes):
                    patterns.append(regex)
                    owners.append(number)
        self._owners = owners
        self._matcher = Matcher(patterns, single=True)

    def decide(self, path: bytes) -> Decision:
        matched = self._matcher.matching(path)
        if matched:
            return Decision(self.rules[min(self._owners[number] for number in matched)])
        name = path.rpartition(b"/")[2]
        return Decision(None, credential_name=bool(CREDENTIAL_NAME.search(name)) and not CODE_SUFFIX.search(name))


@functools.lru_cache(maxsize=8)
def rule_set(rules: tuple[Rule, ...], homes: tuple[bytes, ...]) -> RuleSet:
    """The RuleSet of these rules and homes, compiled once per process (compiling takes most
    of a second; the tests publish hundreds of trees in one process)."""
    return RuleSet(list(rules), list(homes))


def load_allowlist(user_file: str | None) -> list[Allow]:
    """The [[allow]] entries of the user's rules file (path, rule, fingerprint: as a dry run prints them)."""
    if user_file is None:
        return []
    with open(user_file, encoding="utf-8") as rules_file:
        document = _toml(rules_file.read(), user_file)
    entries = []
    for number, item in enumerate(document.get("allow", []), 1):
        if not (isinstance(item, dict) and all(isinstance(item.get(key), str) and item[key] for key in ("path", "rule", "fingerprint"))):
            raise UsageError(f"{user_file}: allow {number}: needs path, rule and fingerprint (as 'vml publish --dry-run' prints them)")
        if not item["fingerprint"].startswith("hmac-sha256:"):
            raise UsageError(f"{user_file}: allow {number}: a fingerprint is hmac-sha256:HEX; an allowlist never holds a value")
        entries.append(Allow(item["path"], item["rule"], item["fingerprint"]))
    return entries


def load_rules(user_file: str | None) -> list[Rule]:
    """The user's rules (if a file is given) before the built-in ones; a user rule with a
    built-in rule's id replaces it."""
    builtin = _parse(resources.files("vml.scrub").joinpath("builtin.toml").read_text(encoding="utf-8"), "built-in", "built-in")
    if user_file is None:
        return builtin
    try:
        with open(user_file, encoding="utf-8") as rules_file:
            text = rules_file.read()
    except OSError as error:
        raise UsageError(f"cannot read the rules file {user_file}: {error.strerror}") from None
    mine = _parse(text, user_file, "user")
    replaced = {rule.id for rule in mine}
    return mine + [rule for rule in builtin if rule.id not in replaced]


def _toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{source}: not valid TOML: {error}") from None


def _parse(text: str, source: str, origin: str) -> list[Rule]:
    document = _toml(text, source)
    rules = []
    for number, item in enumerate(document.get("rule", []), 1):
        where = f"{source}: rule {number}"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise UsageError(f"{where}: every rule needs an id")
        paths = item.get("paths")
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise UsageError(f"{where} ({item['id']}): paths must be a list of globs")
        action = item.get("action")
        if action not in ACTIONS:
            raise UsageError(f"{where} ({item['id']}): action must be one of {', '.join(ACTIONS)}")
        redactor = item.get("redactor")
        if action == "redact" and redactor not in REDACTORS:
            raise UsageError(f"{where} ({item['id']}): a redact rule needs a redactor, one of {', '.join(REDACTORS)}")
        rules.append(Rule(item["id"], tuple(paths), action, str(item.get("category", "custom")), redactor,
                          bool(item.get("scan", True)), origin))
    return rules


def glob_regexes(glob: str, homes: list[bytes]) -> list[bytes]:
    """The anchored regular expressions (for Hyperscan) of one glob (none for a `~/` glob
    when the tree names no home)."""
    if glob.startswith("~/"):
        if not homes:
            return []
        return [b"^(" + b"|".join(re.escape(home) for home in homes) + b")/" + _translate(glob[2:]) + b"$"]
    if glob.startswith("/"):
        return [b"^" + _translate(glob[1:]) + b"$"]
    if glob.startswith("**/"):
        return [b"^(.*/)?" + _translate(glob[3:]) + b"$"]
    if "/" in glob.rstrip("/"):
        return [b"^" + _translate(glob) + b"$"]
    return [b"^(.*/)?" + _translate(glob) + b"$"]


def _translate(glob: str) -> bytes:
    out = []
    raw = glob.encode("utf-8", "surrogateescape")
    position = 0
    while position < len(raw):
        if raw.startswith(b"/**", position) and position + 3 == len(raw):
            out.append(b"/.*")
            position += 3
        elif raw.startswith(b"**/", position):
            out.append(b"(.*/)?")
            position += 3
        elif raw.startswith(b"**", position):
            out.append(b".*")
            position += 2
        elif raw[position : position + 1] == b"*":
            out.append(b"[^/]*")
            position += 1
        elif raw[position : position + 1] == b"?":
            out.append(b"[^/]")
            position += 1
        else:
            out.append(re.escape(raw[position : position + 1]))
            position += 1
    return b"".join(out)


def homes_from_passwd(passwd: bytes | None) -> list[bytes]:
    """The home directories /etc/passwd names, relative to the top ('/' and missing ones left out)."""
    homes = {b"root"}
    for line in (passwd or b"").splitlines():
        fields = line.split(b":")
        if len(fields) >= 7:
            home = fields[5].strip().strip(b"/")
            if home and b"\0" not in home and b".." not in home.split(b"/"):
                homes.add(home)
    return sorted(homes)
