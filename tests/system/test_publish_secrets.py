"""Issue 18's planted-secrets test: a guest with more than 30 secrets of more than 20 kinds
(tests/support/planted.py) is committed twice (a secret edited out in between), published,
and pushed to a fresh bare remote; every form of every secret is searched for through
everything the remote holds: 0 hits. The same search through the private repository finds
them all (the positive control: the search works). The false-positive corpus comes through
byte-identical, and the restored public tree still parses."""

from __future__ import annotations

import configparser
import json

import pytest
from conftest import Vml
from support.planted import edit_out_earlier, false_positive_corpus, plant, search


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    """The planted guest committed twice and published; the public entry pushed to a fresh remote."""
    work = tmp_path_factory.mktemp("planted")
    guest = work / "guest"
    planted = plant(guest)
    benign = false_positive_corpus(guest)
    vml = Vml(work)
    vml("init")
    vml("area", "add", "guest", "--dir", str(guest))
    vml("commit", "-m", "with the earlier secret")
    edit_out_earlier(guest)
    vml("commit", "-m", "analysis environment")
    dry = vml("publish", "main", "--dry-run", "--json").json()
    refs_after_dry_run = vml("branch", "--json").json()
    result = vml("publish", "main", "--json").json()
    remote = work / "public.vml"
    vml("init", "--bare", str(remote))
    vml("remote", "add", "origin", str(remote))
    vml("push", "origin", "public/main")
    restored = work / "restored"
    checkout = vml("checkout", "public/main", "--to", str(restored), "--json").json()
    return {"work": work, "guest": guest, "planted": planted, "benign": benign, "vml": vml, "dry": dry, "result": result,
            "remote": remote, "restored": restored, "checkout": checkout, "refs_after_dry_run": refs_after_dry_run}


def test_the_planted_set_is_what_the_issue_asks(published: dict):
    planted = published["planted"]
    assert len(planted) >= 30 and len({p.kind for p in planted}) >= 20
    kinds = {p.kind for p in planted}
    assert {"encrypted-pkcs8", "docker-auth-base64", "token-across-chunks", "earlier-vault-token", "token-in-gzip"} <= kinds
    assert len([k for k in kinds if k.startswith("history-")]) >= 5


def test_the_private_repository_holds_every_secret(published: dict):
    """The positive control: were the search blind, 0 hits below would mean nothing."""
    hits = search(published["work"] / ".vml", published["planted"])
    missing = sorted(p.kind for p in published["planted"] if p.kind not in hits)
    assert missing == [], f"the search does not find these in the private repository: {missing}"


def test_the_public_remote_holds_none_of_them(published: dict):
    hits = search(published["remote"], published["planted"])
    assert hits == {}, "leaked:\n" + "\n".join(f"{kind}: {', '.join(where[:3])}" for kind, where in sorted(hits.items()))


def test_the_public_tree_keeps_the_corpus_and_still_parses(published: dict):
    guest, restored = published["guest"], published["restored"]
    for path in published["benign"]:
        assert (restored / path.lstrip("/")).read_bytes() == (guest / path.lstrip("/")).read_bytes(), path
    shadow = (restored / "etc/shadow").read_text().splitlines()
    assert [line.split(":")[0] for line in shadow] == ["root", "alice", "phys", "nobody"]
    assert all(len(line.split(":")) == 9 for line in shadow) and [line.split(":")[1] for line in shadow] == ["!", "!", "!", "*"]
    fstab = [line for line in (restored / "etc/fstab").read_text().splitlines() if line and not line.startswith("#")]
    assert all(len(line.split()) == 6 for line in fstab) and not any("password=" in line for line in fstab)
    assert len(fstab) == 2  # the entry stays, without its credentials
    json.loads((restored / "home/alice/.docker/config.json").read_text())
    json.loads((restored / "home/alice/.config/wlcg/session.json").read_text())
    for ini in ("etc/NetworkManager/system-connections/lab.nmconnection", "home/alice/.my.cnf", "etc/pip.conf", "etc/wireguard/wg0.conf"):
        if (restored / ini).exists():
            configparser.ConfigParser(interpolation=None, strict=False).read_string((restored / ini).read_text())
    assert (restored / "home/alice/.bash_history").read_text().splitlines()[:3] == ["ls -la", "cd ~/analysis", "root -l fit.C"]
    sssd = configparser.ConfigParser(interpolation=None)
    sssd.read_string((restored / "etc/sssd/sssd.conf").read_text())
    assert sssd["domain/cern.ch"]["ldap_default_authtok_type"] == "obfuscated_password"  # a setting, not a secret: kept
    assert (restored / "var/spool/cron/crontabs/alice").read_text().startswith("0 3 * * * PGPASSWORD= pg_dump")
    token = next(p.secret for p in published["planted"] if p.kind == "token-across-chunks")
    log = (guest / "data/phys/runs/run000412.log").read_bytes()  # the 50 MB file stays, the token replaced
    public = (restored / "data/phys/runs/run000412.log").read_bytes()
    assert token not in public and b"VML-REDACTED:github-token" in public and abs(len(public) - len(log)) < 64
    assert public[:20_000_000] == log[:20_000_000] and public[-20_000_000:] == log[-20_000_000:]


def test_the_dry_run_reports_every_planted_file_and_changes_nothing(published: dict):
    dry, planted = published["dry"], published["planted"]
    reported = {f["path"] for f in dry["findings"]}
    in_final = {p.path for p in planted if not p.earlier}
    assert in_final <= reported, f"not reported: {sorted(in_final - reported)}"
    assert dry["entry"] is None and published["refs_after_dry_run"] == published["vml"]("branch", "--json").json()
    assert any(d["names"] == "/home/alice/.ssh/id_ed25519" for d in dry["dangling"])
    assert not any(p.secret.decode("latin-1") in json.dumps(dry) for p in planted)  # previews are masked


def test_the_checkout_says_what_could_not_come_back(published: dict):
    notice = " ".join(published["checkout"]["restore_notice"])
    for hint in ("ssh-keygen", "voms-proxy-init", "kinit", "passwd", "nmcli", "credentials=", "docker login", "directory"):
        assert hint in notice, hint
