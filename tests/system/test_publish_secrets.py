"""Issue 18's planted-secrets test: a guest with over a hundred secrets of as many kinds
(tests/support/planted.py) is committed twice (secrets edited out and a file deleted in
between), published, and pushed to a fresh bare remote; every form of every secret is
searched for through everything the remote holds: 0 hits. The same search through the
private repository finds them all (the positive control: the search works). The
false-positive corpus comes through byte-identical, and the restored public tree still parses.

What the test assumes of the command line (issue 18):
  vml publish ENTRY --as NAME [-m MESSAGE] [--dry-run] --json
      -> {"ref": "refs/public/NAME", "entry": <id, or null in a dry run>,
          "findings": [{"path": "/etc/shadow", ...}, ...], "dangling": [{"names": PATH, ...}], ...}
  vml push REMOTE public/NAME;  vml checkout public/NAME --to DIR --json -> {"restore_notice": [...]}
"""

from __future__ import annotations

import configparser
import json
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import Vml
from support.planted import HISTORY_KEPT, Needles, edit_out_earlier, entry_roots, false_positive_corpus, find_secrets, pack_blob_ids, plant

from vml.objects.chunker import MAX_SIZE

NAME = "physics-env"
LARGE = "data/phys/runs/run000412.log"


def refs(git_dir: Path) -> dict[str, str]:
    listed = subprocess.run(["git", "--git-dir", str(git_dir), "for-each-ref", "--format=%(refname) %(objectname)"],
                            capture_output=True, text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in listed.splitlines())


def commits(git_dir: Path, ref: str) -> set[str]:
    return set(subprocess.run(["git", "--git-dir", str(git_dir), "rev-list", ref], capture_output=True, text=True, check=True).stdout.split())


def leaks(hits: dict[str, list[str]]) -> str:
    return "\n".join(f"  {kind}: {'; '.join(where[:3])}{' ...' if len(where) > 3 else ''}" for kind, where in sorted(hits.items()))


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> dict:
    """The planted guest committed twice: with the earlier secrets, then without them."""
    work = tmp_path_factory.mktemp("planted")
    guest = work / "guest"
    planted = plant(guest)
    benign = false_positive_corpus(guest)
    vml = Vml(work)
    vml("init")
    vml("area", "add", "guest", "--dir", str(guest))
    vml("commit", "-m", "with the earlier secrets")
    edit_out_earlier(guest)
    vml("commit", "-m", "analysis environment")
    return {"work": work, "guest": guest, "planted": planted, "benign": benign, "vml": vml, "repository": work / ".vml"}


@pytest.fixture(scope="module")
def published(committed: dict) -> dict:
    """The second entry published as public/NAME (a dry run first), pushed to a fresh bare
    remote, and checked out from the public lineage."""
    vml, work, repository = committed["vml"], committed["work"], committed["repository"]
    refs_before = refs(repository)
    dry_run = vml("publish", "main", "--as", NAME, "--dry-run", "--json")
    refs_after_dry_run = refs(repository)
    result = vml("publish", "main", "--as", NAME, "-m", "analysis environment, public", "--json").json()
    remote = work / "public.vml"
    vml("init", "--bare", str(remote))
    vml("remote", "add", "origin", str(remote))
    vml("push", "origin", f"public/{NAME}")
    restored = work / "restored"
    checkout = vml("checkout", f"public/{NAME}", "--to", str(restored), "--json").json()
    return {**committed, "dry_output": dry_run.stdout, "dry": dry_run.json(), "refs_before": refs_before,
            "refs_after_dry_run": refs_after_dry_run, "result": result, "remote": remote, "restored": restored, "checkout": checkout}


def test_the_planted_set_is_what_the_issue_asks(committed: dict):
    planted = committed["planted"]
    kinds = {p.kind for p in planted}
    assert len(planted) >= 30 and len(kinds) >= 20 and len(kinds) == len(planted)
    assert {"encrypted-pkcs8", "docker-auth-base64", "docker-password", "token-across-chunks", "pem-across-chunks", "earlier-vault-token",
            "token-in-gzip", "password-in-gzip", "grid-proxy", "keytab", "openssh-key", "ssh-host-key", "aws-secret-key", "kube-token",
            "bashrc-export", "netrc", "pgpass", "git-credentials", "networkmanager-psk", "wpa-psk", "fstab-password",
            "shadow-sha512", "shadow-yescrypt"} <= kinds
    assert {"history-mysql", "history-curl", "history-sshpass", "history-export-token", "history-url", "history-kinit"} <= kinds
    assert any(p.path.startswith("/data/phys/") for p in planted) and any(p.path.startswith("/root/") for p in planted)
    assert Needles(planted).found_in(b"".join((committed["guest"] / path.lstrip("/")).read_bytes() for path in committed["benign"])) == []


def test_the_private_repository_holds_every_secret(committed: dict):
    """The positive control: were the search blind, 0 hits below would mean nothing. The
    cut secrets are whole only in their reassembled file: the store holds them in pieces."""
    hits = find_secrets(committed["repository"], committed["planted"])
    missing = sorted(p.kind for p in committed["planted"] if not p.ephemeral and p.kind not in hits)
    assert missing == [], f"the search does not find these in the private repository: {missing}"
    for kind in ("token-across-chunks", "pem-across-chunks"):
        whole = [where for where in hits[kind] if where.startswith("raw in ")]
        assert whole and all(where.startswith("raw in file ") for where in whole), whole
        assert any(where.startswith("piece in zstd frame") for where in hits[kind]), hits[kind]


def test_expiring_credentials_are_in_no_entry_even_a_private_one(committed: dict):
    ephemeral = [p for p in committed["planted"] if p.ephemeral]
    assert ephemeral
    hits = find_secrets(committed["repository"], ephemeral)
    assert hits == {}, "in the private repository:\n" + leaks(hits)


def test_the_public_remote_holds_none_of_them(published: dict):
    hits = find_secrets(published["remote"], published["planted"])
    assert hits == {}, "leaked to the public remote:\n" + leaks(hits)


def test_the_public_checkout_holds_none_of_them(published: dict):
    hits = find_secrets(published["restored"], published["planted"])
    assert hits == {}, "in the checkout of the public entry:\n" + leaks(hits)


def test_the_remote_holds_the_public_lineage_and_nothing_else(published: dict):
    repository, remote = published["repository"], published["remote"]
    ref = f"refs/public/{NAME}"
    assert published["result"]["ref"] == ref and ref in refs(repository)
    assert list(refs(remote)) == [ref], refs(remote)
    assert commits(repository, ref).isdisjoint(commits(repository, "refs/heads/main")), "a private entry is reachable from the public one"
    reachable = subprocess.run(["git", "--git-dir", str(remote), "rev-list", "--objects", "--all"], capture_output=True, text=True,
                               check=True).stdout.split()
    present = subprocess.run(["git", "--git-dir", str(remote), "cat-file", "--batch-all-objects", "--batch-check=%(objectname)"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert set(present) <= set(reachable), "git objects on the remote that no ref reaches"
    stored, needed = pack_blob_ids(remote), public_blob_ids(remote)
    assert stored <= needed, f"{len(stored - needed)} blobs on the remote that the public entry does not use"


def test_both_repositories_are_sound_after_publishing_and_pushing(published: dict):
    published["vml"].fsck_clean()
    published["vml"].fsck_clean("--repo", str(published["remote"]))


def public_blob_ids(repository: Path) -> set[bytes]:
    """Every listing and chunk the entries of `repository` use."""
    from vml.objects.store import ChunkStore
    from vml.objects.walk import missing_blobs

    store = ChunkStore(str(repository / "vml" / "store")).open()
    try:
        listings, chunks = missing_blobs(lambda ids: [store.get(i) for i in ids], entry_roots(repository), lambda _id: False)
    finally:
        store.close()
    return {listing_id for listing_id, _raw in listings} | set(chunks)


def test_the_public_tree_keeps_the_corpus_and_still_parses(published: dict):
    guest, restored = published["guest"], published["restored"]
    changed = [path for path in published["benign"] if (restored / path.lstrip("/")).read_bytes() != (guest / path.lstrip("/")).read_bytes()]
    assert changed == [], f"false positives: not byte-identical after publishing: {changed}"
    check_accounts(guest, restored)
    fstab = [line for line in (restored / "etc/fstab").read_text().splitlines() if line and not line.startswith("#")]
    assert len(fstab) == 3 and all(len(line.split()) == 6 for line in fstab), fstab  # the entries stay, without their passwords
    assert not any("password=" in line for line in fstab) and "credentials=/root/.smbcredentials" in fstab[2]
    for path in ("home/alice/.docker/config.json", "home/alice/.config/wlcg/session.json", "home/alice/.jupyter/jupyter_server_config.json"):
        if (restored / path).exists():
            json.loads((restored / path).read_text())
    for path in ("etc/NetworkManager/system-connections/lab.nmconnection", "etc/NetworkManager/system-connections/eduroam.nmconnection",
                 "home/alice/.my.cnf", "home/alice/.pypirc", "etc/pip.conf", "etc/wireguard/wg0.conf", "home/alice/.config/rclone/rclone.conf",
                 "etc/systemd/system/monitor.service"):
        if (restored / path).exists():
            configparser.ConfigParser(interpolation=None, strict=False).read_string((restored / path).read_text())
    sssd = configparser.ConfigParser(interpolation=None)
    sssd.read_string((restored / "etc/sssd/sssd.conf").read_text())
    assert sssd["domain/cern.ch"]["ldap_default_authtok_type"] == "obfuscated_password"  # a setting, not a secret: kept
    if (restored / "home/alice/.gitconfig").exists():
        subprocess.run(["git", "config", "--file", str(restored / "home/alice/.gitconfig"), "--list"], check=True, capture_output=True)
    if (restored / "home/alice/.m2/settings.xml").exists():
        ElementTree.fromstring((restored / "home/alice/.m2/settings.xml").read_bytes())
    assert (restored / "etc/machine-id").read_bytes() == b""  # systemd makes a new one at boot
    for history in ("home/alice/.bash_history", "root/.bash_history"):
        assert (restored / history).read_text().splitlines()[:3] == HISTORY_KEPT, history
    assert (restored / "var/spool/cron/crontabs/alice").read_text().startswith("0 3 * * * PGPASSWORD= pg_dump")
    log, public = (guest / LARGE).read_bytes(), (restored / LARGE).read_bytes()  # the 50 MB file stays, its secrets replaced
    assert public[: 6 * MAX_SIZE - 64] == log[: 6 * MAX_SIZE - 64] and public[-10_000_000:] == log[-10_000_000:]


def check_accounts(guest: Path, restored: Path) -> None:
    """shadow and gshadow keep every user and group, every field but the hash, in valid syntax."""
    for name, fields in (("etc/shadow", 9), ("etc/gshadow", 4)):
        before = [line.split(":") for line in (guest / name).read_text().splitlines()]
        after = [line.split(":") for line in (restored / name).read_text().splitlines()]
        assert all(len(line) == fields for line in after), after
        assert [line[:1] + line[2:] for line in after] == [line[:1] + line[2:] for line in before], name
        for old, new in zip(before, after):
            if old[1] not in ("", "!", "*", "!!"):
                assert new[1] in ("!", "*"), (name, new[0], new[1])


def test_the_dry_run_reports_every_planted_file_and_changes_nothing(published: dict):
    dry, planted = published["dry"], published["planted"]
    assert published["refs_after_dry_run"] == published["refs_before"]
    assert dry["entry"] is None
    in_final = {p.path for p in planted if not p.earlier and not p.ephemeral}
    reported = {f["path"] for f in dry["findings"]}
    assert in_final <= reported, f"not reported: {sorted(in_final - reported)}"
    assert len(dry["findings"]) >= len(in_final)
    assert any(d["names"] == "/home/alice/.ssh/id_ed25519" for d in dry["dangling"])
    shown = Needles(planted).found_in(published["dry_output"].encode())
    assert shown == [], f"the dry run shows secrets (previews must be masked): {shown}"


def test_the_checkout_says_what_could_not_come_back(published: dict):
    notice = " ".join(published["checkout"]["restore_notice"])
    for hint in ("ssh-keygen", "voms-proxy-init", "kinit", "passwd", "nmcli", "credentials=", "docker login", "directory"):
        assert hint in notice, hint


def test_the_search_finds_a_secret_in_every_form_wherever_it_hides(tmp_path: Path):
    """The oracle's own check, beyond what the positive control exercises: each form, in an
    orphan zstd frame, in the second member of a gzip file, gzip inside zstd, a symlink
    target, an xattr, and a secret cut in two; a pack blob it cannot open is an error."""
    import base64
    import gzip
    import os
    import struct

    import zstandard
    from support.planted import PACK_END_MAGIC, PACK_MAGIC, Planted

    secrets = {place: f"Pw-{place}-{os.urandom(6).hex()}".encode() for place in (
        "raw", "base64-0", "base64-1", "base64-2", "hex", "utf-16le", "orphan-frame", "gzip-member", "gzip-in-zstd", "symlink", "xattr", "cut")}
    top = tmp_path / "top"
    top.mkdir()
    files = {"raw": b"a=" + secrets["raw"], "hex": secrets["hex"].hex().upper().encode(), "utf-16le": secrets["utf-16le"].decode().encode("utf-16-le"),
             "orphan-frame": b"junk" + zstandard.ZstdCompressor().compress(b"x" * 999 + secrets["orphan-frame"]) + b"junk",
             "gzip-member": gzip.compress(b"first member\n") + gzip.compress(b"second " + secrets["gzip-member"]),
             "gzip-in-zstd": zstandard.ZstdCompressor().compress(gzip.compress(secrets["gzip-in-zstd"])),
             "cut-1": secrets["cut"][:12], "cut-2": secrets["cut"][12:]}
    for shift in range(3):
        files[f"base64-{shift}"] = base64.b64encode(b"u:"[:shift] + secrets[f"base64-{shift}"] + b"\n")
    for name, data in files.items():
        (top / name).write_bytes(data)
    os.symlink(b"https://u:" + secrets["symlink"] + b"@host/", top / "link")
    os.setxattr(top / "raw", b"user.origin", secrets["xattr"])
    cut = secrets["cut"]
    planted = [Planted(place, "test", f"/{place}", secret) for place, secret in secrets.items() if place != "cut"]
    planted.append(Planted("cut", "test", "/cut", cut, pieces=(cut[:12], cut[12:])))
    hits = find_secrets(top, planted)
    assert sorted(hits) == sorted(secrets), sorted(set(secrets) - set(hits))
    assert hits["cut"] == ["piece in cut-1", "piece in cut-2"]
    assert find_secrets(top, [Planted("absent", "test", "/", secrets["raw"] + b"!")]) == {}

    unreadable = b"\x07" * 40  # a blob flagged with a compression this search does not know
    table = struct.pack("<32sBBIII", bytes(32), 0, 7, len(PACK_MAGIC), len(unreadable), 40)
    (top / "x.pack").write_bytes(PACK_MAGIC + unreadable + table + struct.pack("<IIQ8s", 1, len(table), 0, PACK_END_MAGIC))
    with pytest.raises(AssertionError, match="not one this search can open"):
        find_secrets(top, planted)
