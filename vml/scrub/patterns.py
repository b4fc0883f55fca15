"""What the content scan looks for: private keys of every PEM header, provider token formats,
URL userinfo, Authorization headers and docker auths (`CONTENT`), the `key = value` lines of
configuration files whose key names a secret (`ASSIGNMENT`), and the shell-history forms that
carry a password or token (`HISTORY`). Each pattern is valid for both Hyperscan and `re`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vml.scrub.matcher import Matcher

ANY = "any"  # binary files too
TEXT = "text"  # files without a NUL byte in their first 8 KiB

BLOCK = "block"  # a PEM or PuTTY key: the whole block goes
VALUE = "value"  # the group named secret goes (or the whole match when there is none)


@dataclass(frozen=True, slots=True)
class Pattern:
    id: str
    category: str
    regex: bytes
    scope: str = ANY
    kind: str = VALUE

    @property
    def compiled(self) -> re.Pattern[bytes]:
        return _compiled(self.regex)

    @property
    def prefilter(self) -> bytes:
        """The pattern for Hyperscan: the same, its named groups plain ones."""
        return self.regex.replace(b"(?P<secret>", b"(")


_CACHE: dict[bytes, re.Pattern[bytes]] = {}


def _compiled(regex: bytes) -> re.Pattern[bytes]:
    found = _CACHE.get(regex)
    if found is None:
        found = _CACHE[regex] = re.compile(regex, re.DOTALL)
    return found


CONTENT = (
    # A header with a body: programs that read keys carry the header alone, as a string.
    Pattern("private-key", "tls", rb"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY( BLOCK)?-----\r?\n([A-Za-z0-9-]{1,40}:[^\n]{0,200}\n){0,8}\r?\n?"
                                  rb"[A-Za-z0-9+/=]{40}", kind=BLOCK),
    Pattern("putty-key", "ssh", rb"PuTTY-User-Key-File-[0-9]+:", kind=BLOCK),
    Pattern("github-token", "tokens", rb"(?P<secret>\b(gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255}))"),
    Pattern("gitlab-token", "tokens", rb"(?P<secret>\bgl(pat|ptt|dt|rt|cbt|soat)-[A-Za-z0-9_\-]{20,})"),
    Pattern("slack-token", "tokens", rb"(?P<secret>\bxox[abposre]-[0-9A-Za-z\-]{10,})"),
    Pattern("slack-webhook", "tokens", rb"(?P<secret>hooks\.slack\.com/services/T[A-Za-z0-9_]{6,}/B[A-Za-z0-9_]{6,}/[A-Za-z0-9_]{12,})"),
    Pattern("aws-access-key-id", "cloud", rb"(?P<secret>\b(AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[0-9A-Z]{16}\b)"),
    Pattern("aws-secret-key", "cloud", rb"(?i:aws_?secret_?access_?key)[\"']?\s*[:=]\s*[\"']?(?P<secret>[A-Za-z0-9/+=]{40})"),
    Pattern("openai-key", "tokens", rb"(?P<secret>\bsk-(proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{32,})"),
    Pattern("huggingface-token", "tokens", rb"(?P<secret>\bhf_[A-Za-z0-9]{34,})"),
    Pattern("pypi-token", "tokens", rb"(?P<secret>pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})"),
    Pattern("npm-token", "tokens", rb"(?P<secret>\bnpm_[A-Za-z0-9]{36}\b)"),
    Pattern("google-api-key", "cloud", rb"(?P<secret>\bAIza[0-9A-Za-z_\-]{35})"),
    Pattern("stripe-key", "tokens", rb"(?P<secret>\b[rs]k_live_[0-9a-zA-Z]{24,})"),
    Pattern("jwt", "tokens", rb"(?P<secret>\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})"),
    Pattern("vault-token", "tokens", rb"(?P<secret>\bhv[sb]\.[A-Za-z0-9_\-]{24,})"),
    Pattern("azure-storage-key", "cloud", rb"AccountKey=(?P<secret>[A-Za-z0-9+/]{86,88}={0,2})"),
    Pattern("age-key", "tokens", rb"(?P<secret>AGE-SECRET-KEY-1[0-9A-Z]{58})"),
    Pattern("crypt-hash", "accounts", rb"(?P<secret>\$(1|2[aby]|5|6|7|y|gy)\$[./A-Za-z0-9$=,]{8,}[./A-Za-z0-9])", TEXT),
    Pattern("conda-channel-token", "dev-logins", rb"https?://[^\s/'\"]+/t/(?P<secret>[A-Za-z0-9_\-]{16,})/", TEXT),
    Pattern("url-userinfo", "tokens", rb"[A-Za-z][A-Za-z0-9+.\-]{1,20}://(?P<secret>[^\s/:@'\"<>]{1,128}:[^\s/@'\"<>]{1,256})@", TEXT),
    Pattern("authorization-header", "tokens",
            rb"(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?i:bearer|basic|token|negotiate)\s+(?P<secret>[A-Za-z0-9+/=._~\-]{8,})", TEXT),
    Pattern("docker-auth", "cloud", rb"\"(auth|identitytoken|registrytoken|password)\"\s*:\s*\"(?P<secret>[^\"]{8,})\"", TEXT),
)

# A configuration line whose key names a secret: key = value, key: value, key "value".
SECRET_KEY = (rb"[A-Za-z0-9_.\-]*(?i:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
              rb"client[_-]?secret|credentials?|bindpw|authtok|psk|_auth|wep-key[0-9]|presharedkey|privatekey|(?<![A-Za-z])pass)"
              rb"([_.\-][A-Za-z0-9_.\-]*)?")
# Keys that name a secret's kind, place or policy, not the secret (ldap_default_authtok_type, psk-flags, password_file).
SETTING_KEY = re.compile(rb"(?i)[_.\-](type|flags|file|path|dir|length|policy|method|mode|prompt|expiry|expire|max_age|min_length|"
                         rb"hash|hashing|algorithm|required|enabled|command|cmd|program|helper)[\"']?$")
ASSIGNMENT = re.compile(
    rb"(?m)(?P<key>^[ \t]*[\"']?" + SECRET_KEY + rb")[\"']?[ \t]*(?:=|:(?!//))[ \t]*(?P<quote>[\"']?)"
    rb"(?P<secret>[^\s\"'#;,}]{3,}[^\"'\n]*?)(?P=quote)[ \t]*(?=$|[#;,}])")
# nslcd.conf, ldap.conf, pam_ldap.conf: `key value`, whitespace between.
SPACED_ASSIGNMENT = re.compile(rb"(?m)(?P<key>^[ \t]*" + SECRET_KEY + rb")[ \t]+(?P<secret>[^\s#]\S*)[ \t]*$")
# `password=...` inside a line (a log's connect string, a URL's query) in configuration and logs.
INLINE_PASSWORD = re.compile(rb"(?i)(?<![A-Za-z0-9_])(?P<key>password|passwd|pwd|passphrase)=(?P<secret>[^\s&'\",;)]{4,})")
# Values that are not secrets: references, booleans, placeholders, files.
NOT_A_VALUE = re.compile(rb"(?i)^(\$|%\(|\{\{|<|/|~|\*+$|!+$|none$|null$|true$|false$|yes$|no$|on$|off$|VML-REDACTED|x+$|0$|1$|"
                         rb"\.\.\.$|changeme$|required$|optional$|sufficient$|password$|obfuscated_password$|plain$|files$)")


def is_secret_assignment(match: re.Match[bytes]) -> bool:
    """Whether an ASSIGNMENT match holds a secret: not a reference or a setting's word as the
    value, not a key that names the secret's kind or place."""
    return not NOT_A_VALUE.match(match.group("secret")) and not SETTING_KEY.search(match.group("key"))

HISTORY = re.compile(rb"(?i)(" + b"|".join((
    rb"\b(mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)\b.*\s-p\S",
    rb"--pass(word|wd)?[= ]\s*\S", rb"--(api-?key|token|secret|client-secret)[= ]\s*\S",
    rb"\bsshpass\b", rb"\bcurl\b.*\s(-u|--user)\s*\S+:\S", rb"-H\s*[\"']?authorization:", rb"\bwget\b.*--(http-)?password",
    rb"\b(export\s+|set\s+-x\s+|setenv\s+)?[A-Za-z_]*(token|secret|passw|pwd|api_?key|access_?key|credential)[A-Za-z_]*\s*=\s*\S",
    rb"\|\s*(sudo\s+)?(kinit|passwd|chpasswd|docker\s+login|podman\s+login|helm\s+registry\s+login|voms-proxy-init|grid-proxy-init)\b",
    rb"--pwstdin", rb"--password-stdin", rb"-pass(in|out)?\s+pass:", rb"-k\s+\S+.*\bopenssl\b|\bopenssl\b.*\s-k\s+\S",
    rb"\bsmbclient\b.*-U\s*\S+%\S", rb"\bmount\b.*(password|pass)=", rb"\b(docker|podman)\s+login\b.*\s-p\s*\S",
    rb"\b(PGPASSWORD|MYSQL_PWD|SSHPASS|RCLONE_CONFIG_PASS)=", rb"\bgh\s+auth\s+login\b.*--with-token", rb"--from-literal=",
    rb"\bhtpasswd\b.*-b", rb"\bchpasswd\b", rb"\bpasswd\b.*--stdin", rb"\bsudo\s+-S\b", rb"/user:\S+\s+\S",
    rb"identified(\s|\\040)+(with(\s|\\040)+\S+(\s|\\040)+)?(by|as)\b", rb"\bpassword(\s|\\040)*=?(\s|\\040)*'",
    rb"\bauth\s*=\s*\(", rb"HTTPBasicAuth\s*\(", rb"HTTPDigestAuth\s*\(", rb"\.login\s*\([^)]*,",
)) + rb")")

# Variables whose names say they hold secrets (their values are blanked); known exceptions.
SECRET_NAME = re.compile(rb"(?i)(pass(word|wd)?|secret|token|api_?key|access_?key|private_?key|credential|auth(?!or)|session|cookie|bearer|pwd)")
SECRET_NAME_EXCEPTIONS = re.compile(rb"(?i)^(TOKENIZERS_PARALLELISM|SSH_AUTH_SOCK|XAUTHORITY|PASSWORD_STORE_DIR|OLDPWD|PWD|.*_(FILE|PATH|DIR|SOCK))$")
RUNTIME_VARIABLES = frozenset({b"SSH_AUTH_SOCK", b"SSH_AGENT_PID", b"DBUS_SESSION_BUS_ADDRESS", b"XDG_RUNTIME_DIR", b"GPG_AGENT_INFO",
                               b"KRB5CCNAME", b"X509_USER_PROXY", b"BEARER_TOKEN_FILE"})

# What the scan's answer depends on besides rules and data: a cached "nothing found" made
# under other patterns is worth nothing (vml/scrub/cache.py).
PATTERNS_DIGEST_SOURCE = repr((CONTENT, ASSIGNMENT.pattern, INLINE_PASSWORD.pattern, SPACED_ASSIGNMENT.pattern, NOT_A_VALUE.pattern,
                               SETTING_KEY.pattern, HISTORY.pattern, SECRET_NAME.pattern)).encode()

_content_matcher: Matcher | None = None


def content_matcher() -> Matcher:
    """All of CONTENT in one Hyperscan database (compiled once per process)."""
    global _content_matcher
    if _content_matcher is None:
        _content_matcher = Matcher([pattern.prefilter for pattern in CONTENT])
    return _content_matcher


def is_secret_name(name: bytes) -> bool:
    return bool(SECRET_NAME.search(name)) and not SECRET_NAME_EXCEPTIONS.match(name)
