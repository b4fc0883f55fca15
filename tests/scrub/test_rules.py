"""The scrubber's path rules: globs, homes from /etc/passwd, first match wins, user rules
before the built-in ones, the fail-closed name heuristic."""

from __future__ import annotations

from pathlib import Path

import pytest

from vml.errors import UsageError
from vml.scrub.rules import RuleSet, glob_regexes, homes_from_passwd, load_rules

PASSWD = b"""root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/bash
phys:x:1001:1001::/data/phys:/bin/sh
evil:x:1002:1002::/home/../etc:/bin/sh
"""


def decide(rules: RuleSet, path: str) -> str | None:
    decision = rules.decide(path.encode())
    return decision.rule.id if decision.rule else ("credential-name" if decision.credential_name else None)


@pytest.fixture(scope="module")
def builtin() -> RuleSet:
    return RuleSet(load_rules(None), homes_from_passwd(PASSWD))


def test_homes_come_from_passwd_not_only_home():
    homes = homes_from_passwd(PASSWD)
    assert b"data/phys" in homes and b"home/alice" in homes and b"root" in homes and b"usr/sbin" in homes
    assert b"" not in homes  # nobody's home is the top itself: no rule may take the whole tree
    assert not any(b".." in home for home in homes)


@pytest.mark.parametrize("path, rule", [
    ("data/phys/.globus/userkey.pem", "grid-user-key"),
    ("data/phys/.ssh/id_rsa", "ssh-user-key"),
    ("data/phys/.ssh/id_rsa.pub", "ssh-public-key"),
    ("data/phys/.bash_history", "shell-history"),
    ("home/alice/.docker/config.json", "docker-config"),
    ("home/alice/.aws/credentials", "cloud-credentials"),
    ("home/alice/.mozilla/firefox/x.default/logins.json", "browser-profiles"),
    ("root/.netrc", "dev-logins"),
    ("etc/shadow", "shadow"),
    ("etc/shadow-", "account-backups"),
    ("etc/fstab", "network-drive-mounts"),
    ("etc/auto.cifs", "network-drive-mounts"),
    ("etc/ssh/ssh_host_ed25519_key", "ssh-host-key"),
    ("etc/ssh/ssh_host_ed25519_key.pub", "ssh-host-key"),
    ("etc/NetworkManager/system-connections/Eduroam.nmconnection", "wifi-vpn-config"),
    ("etc/krb5.keytab", "kerberos"),
    ("opt/service/http.keytab", "kerberos"),
    ("tmp/krb5cc_1000", "kerberos"),
    ("etc/machine-id", "machine-id"),
    ("usr/lib/python3.11/secrets.py", "package-trees"),
    ("opt/conda/lib/python3.11/site-packages/botocore/credentials.py", "package-trees"),
    ("opt/app/api_token", "credential-name"),
    ("home/alice/work/db_password.txt", "credential-name"),
    ("home/alice/analysis/fit.C", None),
    ("home/alice/analysis/tokenize.py", None),
])
def test_builtin_decisions(builtin: RuleSet, path: str, rule: str | None):
    assert decide(builtin, path) == rule


def test_a_tilde_rule_reaches_every_home_and_only_homes(builtin: RuleSet):
    assert decide(builtin, "data/phys/.Xauthority") == "keyrings"
    assert decide(builtin, "srv/other/.Xauthority") is None  # not a home in /etc/passwd


def test_user_rules_come_first_and_replace_builtins_of_their_id(tmp_path: Path):
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text("""
[[rule]]
id = "ssh-user-key"
paths = ["~/.ssh/id_*"]
action = "keep"
category = "ssh"

[[rule]]
id = "mine"
paths = ["/opt/app/api_token"]
action = "keep"
""")
    rules = RuleSet(load_rules(str(rules_file)), homes_from_passwd(PASSWD))
    assert decide(rules, "home/alice/.ssh/id_rsa") == "ssh-user-key"
    assert rules.decide(b"home/alice/.ssh/id_rsa").rule.action == "keep"  # the built-in drop is gone
    assert decide(rules, "opt/app/api_token") == "mine"
    assert decide(rules, "etc/shadow") == "shadow"  # the other built-ins stay


@pytest.mark.parametrize("text, message", [
    ("[[rule]]\npaths = ['/x']\naction = 'drop'\n", "needs an id"),
    ("[[rule]]\nid = 'a'\npaths = ['/x']\naction = 'burn'\n", "action must be one of"),
    ("[[rule]]\nid = 'a'\npaths = ['/x']\naction = 'redact'\n", "needs a redactor"),
    ("[[rule]]\nid = 'a'\npaths = []\naction = 'drop'\n", "paths must be"),
    ("[[rule\n", "not valid TOML"),
])
def test_bad_rules_files_are_refused_with_the_reason(tmp_path: Path, text: str, message: str):
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_rules(str(rules_file))


def test_globs_stay_within_names_and_escape_the_rest():
    import re

    [regex] = glob_regexes("/etc/a.b/*.conf", [])
    assert re.match(regex, b"etc/a.b/x.conf") and not re.match(regex, b"etc/aXb/x.conf") and not re.match(regex, b"etc/a.b/d/x.conf")
    [deep] = glob_regexes("**/.ssh/id_*", [])
    assert re.match(deep, b".ssh/id_rsa") and re.match(deep, b"a/b/.ssh/id_rsa") and not re.match(deep, b"a/.ssh/x/id_rsa")
