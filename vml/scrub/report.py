"""What a scrub found and did: per file (the dry run's and --json's detail, which stays on
the publisher's machine) and per category (kept in the public entry: counts, the paths of
the files dropped or changed and what to do after a checkout; never a value, a hash or a
size of anything removed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

DROP = "drop"
REDACT = "redact"
DROP_LINES = "drop-lines"

HINTS = {
    "ssh": "SSH keys and authorized_keys were removed: make a new key with ssh-keygen and register its public half where you log in",
    "ssh-host": "SSH host keys were removed: the guest makes new ones at boot (ssh-keygen -A); clients will warn that the host key changed",
    "grid": "grid credentials were removed: copy usercert.pem and userkey.pem into ~/.globus, then run voms-proxy-init",
    "kerberos": "Kerberos keytabs and ticket caches were removed: run kinit, and ask for a new keytab where a service needs one",
    "directory": "directory-service secrets (sssd, LDAP bind passwords) were removed: join or configure the directory again",
    "accounts": "user passwords were locked: set them again with passwd (as root: passwd USER)",
    "network": "Wi-Fi and VPN secrets were removed: enter them again (nmcli connection modify ..., wpa_passphrase)",
    "network-drives": "network-drive credentials were removed from fstab and automount maps: put them in a credentials file "
                      "(credentials=FILE) and mount again",
    "dev-logins": "logins of developer tools were removed (.netrc, .pgpass, git credentials, registry tokens): log in again",
    "cloud": "cloud and container logins were removed: aws configure, gcloud auth login, az login, docker login, kubectl config, gh auth login",
    "keyrings": "keyrings, browser profiles and their saved logins were removed",
    "tls": "private keys were removed: install them again",
    "tokens": "tokens and passwords found inside files were replaced by VML-REDACTED: put your own back",
    "history": "shell-history lines holding passwords or tokens were removed",
    "environment": "values of environment variables that hold secrets were blanked: set them again",
    "identity": "machine identity was reset (machine-id emptied, leases and seeds removed): systemd makes a new one at boot",
    "licences": "licence files were removed: install your licence",
    "unreviewed": "files whose names look like credentials were left out: add a keep rule (vml publish --rules FILE) if they are not",
}


@dataclass(frozen=True, slots=True)
class Finding:
    path: str  # quoted for display
    action: str  # drop | redact | drop-lines
    rule: str
    category: str
    lines: tuple[int, ...] = ()
    preview: str = ""  # masked: the first two characters and the length
    reviewed: bool = True  # False: found by the content scan or the name heuristic, not by a path rule
    fingerprint: str = ""  # a content finding's salted fingerprint, for an [[allow]] entry (never stored in an entry)


@dataclass(frozen=True, slots=True)
class Dangling:
    path: str  # the file that names a dropped one
    line: int
    names: str  # the dropped path it names


@dataclass(slots=True)
class ScrubReport:
    findings: list[Finding] = field(default_factory=list)
    dangling: list[Dangling] = field(default_factory=list)
    unscanned: list[str] = field(default_factory=list)  # compressed or huge files that could not be searched whole

    def unreviewed(self) -> list[Finding]:
        return [finding for finding in self.findings if not finding.reviewed]

    def categories(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter[str]] = {}
        for finding in self.findings:
            count = counts.setdefault(finding.category, Counter())
            if finding.action == DROP:
                count["files_dropped"] += 1
            else:
                count["files_changed"] += 1
                count["lines"] += len(finding.lines)
        return {category: {key: value for key, value in sorted(count.items()) if value} for category, count in sorted(counts.items())}

    def hints(self) -> list[str]:
        return [HINTS[category] for category in sorted({f.category for f in self.findings}) if category in HINTS]

    def to_entry(self) -> dict:
        """The public entry's [scrub] table: no value, hash or size of what was removed."""
        return {
            "public": True,
            "categories": self.categories(),
            "hints": self.hints(),
            "dropped": sorted({f.path for f in self.findings if f.action == DROP}),
            "changed": sorted({f.path for f in self.findings if f.action != DROP}),
        }


def mask(value: bytes) -> str:
    """A preview that shows what kind of value it was, not the value: 'gh…(40)'."""
    head = value[:2].decode("ascii", "replace") if value[:2].isascii() and value[:2].isalnum() else ""
    return f"{head}…({len(value)})"


def restore_notice(scrub: dict | None) -> list[str]:
    """What a checkout of a public entry could not bring back and what to do, from its [scrub] table."""
    if not scrub:
        return []
    lines = [str(hint) for hint in scrub.get("hints", [])]
    dropped = scrub.get("dropped", [])
    if dropped:
        shown = ", ".join(dropped[:8]) + (f" and {len(dropped) - 8} more" if len(dropped) > 8 else "")
        lines.append(f"left out of this public entry: {shown}")
    return lines
