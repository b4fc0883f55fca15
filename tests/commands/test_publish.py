"""vml publish and commit --public from the command line: the public lineage, the dry run,
--strict and --rules, the report in the entry and the notice at checkout, what a push of a
public entry carries, and expiring credentials left out of private entries too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import Vml, one_line_error

TOKEN = "ghp_" + "Pub1" * 9
PASSWORD = "Fstab-Pw-Unique-73"


@pytest.fixture
def secrets(guest: Path) -> Path:
    """The fixture guest with a home in /etc/passwd, a key, a shadow, an fstab and a token."""
    (guest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n")
    (guest / "etc" / "shadow").write_text("root:$6$salt$RootHashValue:19700:0:99999:7:::\nuser:$y$j9T$s$UserHashValue:19700::::::\n")
    (guest / "etc" / "fstab").write_text(f"//srv/d /mnt/d cifs username=user,password={PASSWORD},uid=1000 0 0\n")
    ssh = guest / "home" / "user" / ".ssh"
    ssh.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "user@vm", "-f", str(ssh / "id_ed25519")], check=True)
    (ssh / "config").write_text("Host lxplus\n  IdentityFile ~/.ssh/id_ed25519\n")
    (guest / "home" / "user" / "deploy.md").write_text(f"use {TOKEN} to deploy\n")
    return guest


def git(vml: Vml, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(vml.cwd / ".vml"), *args], check=True, capture_output=True, text=True).stdout


def test_publish_makes_a_public_lineage_that_reaches_nothing_private(repo: Vml, secrets: Path):
    first = repo("commit", "-m", "first", "--json").json()["entry"]
    dry = repo("publish", "main", "--dry-run", "--json").json()
    assert dry["entry"] is None and dry["dry_run"] and git(repo, "for-each-ref", "refs/public") == ""
    rules = {finding["rule"] for finding in dry["findings"]}
    assert {"ssh-user-key", "shadow", "network-drive-mounts", "github-token"} <= rules
    assert dry["dangling"] and dry["dangling"][0]["names"] == "/home/user/.ssh/id_ed25519"

    published = repo("publish", "main", "--json").json()
    assert published["created"] and published["parent"] is None and published["ref"] == "refs/public/main"
    public = published["entry"]
    assert git(repo, "rev-parse", "public/main").strip() == public
    assert git(repo, "rev-list", "--parents", public).split() == [public]  # a root of its own: no private parent
    assert first not in git(repo, "cat-file", "-p", public)
    (secrets / "home" / "user" / "notes.txt").write_text("more notes\n")
    repo("commit", "-m", "second")
    again = repo("publish", "main", "--json").json()
    assert again["created"] and again["parent"] == public
    assert repo("publish", "main", "--json").json()["created"] is False  # nothing changed since
    assert "public/main" in repo("log", "--all", "--oneline").stdout


def test_checkout_of_a_public_entry_says_what_it_could_not_bring_back(repo: Vml, secrets: Path, tmp_path: Path):
    repo("commit", "-m", "first")
    repo("publish", "main")
    result = repo("checkout", "public/main", "--to", str(tmp_path / "out"), "--json").json()
    notice = "\n".join(result["restore_notice"])
    assert "ssh-keygen" in notice and "passwd" in notice and "/home/user/.ssh/id_ed25519" in notice
    out = tmp_path / "out"
    assert not (out / "home" / "user" / ".ssh" / "id_ed25519").exists() and (out / "home" / "user" / ".ssh" / "id_ed25519.pub").exists()
    assert [line.split(":")[1] for line in (out / "etc" / "shadow").read_text().splitlines()] == ["!", "!"]
    assert PASSWORD not in (out / "etc" / "fstab").read_text() and len((out / "etc" / "fstab").read_text().split()) == 6
    assert TOKEN not in (out / "home" / "user" / "deploy.md").read_text()
    text = repo("checkout", "public/main", "--to", str(tmp_path / "again")).stdout
    assert "could not bring back" in text and "ssh-keygen" in text
    private = repo("checkout", "main", "--to", str(tmp_path / "private"), "--json").json()
    assert private["restore_notice"] == []


def test_strict_refuses_what_no_rule_covers_until_a_rule_does(repo: Vml, secrets: Path, tmp_path: Path):
    (secrets / "home" / "user" / "api_token").write_text("not really a token\n")
    repo("commit", "-m", "first")
    refused = repo("publish", "main", "--strict", "--json", check=False)
    assert refused.returncode == 2 and refused.json()["refused"] and refused.json()["unreviewed"] == 2
    assert git(repo, "for-each-ref", "refs/public") == ""
    rules = tmp_path / "reviewed.toml"
    rules.write_text('[[rule]]\nid = "deploy-notes"\npaths = ["~/deploy.md", "~/api_token"]\naction = "scan"\ncategory = "tokens"\n')
    ok = repo("publish", "main", "--strict", "--rules", str(rules), "--json").json()
    assert ok["created"] and ok["unreviewed"] == 0
    assert TOKEN not in git(repo, "show", "public/main:entry.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\nid = 'x'\naction = 'burn'\npaths = ['/x']\n")
    assert "action must be one of" in one_line_error(repo("publish", "main", "--rules", str(bad), check=False))
    entry = git(repo, "rev-parse", "main").strip()[:12]
    (secrets / "home" / "user" / "notes.txt").write_text("later\n")
    repo("commit", "-m", "later")
    repo("checkout", entry)  # the area detached: no branch to name the lineage after
    assert "name the public entry" in one_line_error(repo("publish", entry, check=False))


def test_the_message_is_scrubbed_and_memory_entries_are_refused(repo: Vml, secrets: Path):
    repo("commit", "-m", f"deployed with {TOKEN}")
    repo("publish", "main")
    assert TOKEN not in git(repo, "log", "-1", "--format=%B", "public/main")
    from vml.api.publish import refuse_private_only
    from vml.entry import EntryInfo
    from vml.errors import UsageError

    info = EntryInfo("00" * 32, "a", "libvirt", "", "", "x", "0", 0, 0, 0, 0, memory="11" * 32)
    with pytest.raises(UsageError, match="never public"):
        refuse_private_only(info, "ab" * 20)


def test_push_of_a_public_entry_carries_only_what_it_reaches(repo: Vml, secrets: Path, tmp_path: Path):
    repo("commit", "-m", "private")
    private_commit = git(repo, "rev-parse", "main").strip()
    repo("publish", "main")
    remote = tmp_path / "public.vml"
    repo("init", "--bare", str(remote))
    repo("remote", "add", "origin", str(remote))
    pushed = repo("push", "origin", "public/main", "--json").json()
    assert [change["ref"] for change in pushed["refs"]] == ["public/main"]
    refs = subprocess.run(["git", "--git-dir", str(remote), "for-each-ref", "--format=%(refname)"], capture_output=True, text=True).stdout
    assert refs.split() == ["refs/public/main"]
    objects = subprocess.run(["git", "--git-dir", str(remote), "cat-file", "--batch-all-objects", "--batch-check"],
                             capture_output=True, text=True, check=True).stdout
    assert private_commit not in objects
    store = b"".join(path.read_bytes() for path in (remote / "vml").rglob("*") if path.is_file())
    key = (secrets / "home" / "user" / ".ssh" / "id_ed25519").read_bytes()
    assert key[40:80] not in store  # packs are compressed: the positive control is the helper's search (test_publish_secrets)
    clone = Vml(tmp_path)
    clone("clone", str(remote), "copy")
    copy = Vml(tmp_path / "copy")
    assert git(copy, "rev-parse", "public/main").strip() == git(repo, "rev-parse", "public/main").strip()
    copy("checkout", "public/main", "--to", str(tmp_path / "restored"))
    assert (tmp_path / "restored" / "home" / "user" / "notes.txt").read_text() == "analysis notes\n"
    copy.fsck_clean()


def test_commit_public_makes_a_public_entry_straight_from_the_area(repo: Vml, secrets: Path):
    dry = repo("commit", "--public", "--as", "release", "-m", "public", "--dry-run", "--json").json()
    assert dry["entry"] is None and any(f["rule"] == "shadow" for f in dry["findings"])
    made = repo("commit", "--public", "--as", "release", "-m", "public", "--json").json()
    assert made["created"] and made["ref"] == "refs/public/release"
    assert git(repo, "for-each-ref", "refs/heads") == ""  # no private entry was made
    shadow = git(repo, "show", "public/release:entry.toml")
    assert "[scrub" in shadow
    wrong = repo("commit", "-m", "x", "--dry-run", check=False)
    assert wrong.returncode == 2 and "go with --public" in wrong.stderr


def test_hardlinks_share_the_strictest_rule(repo: Vml, guest: Path, tmp_path: Path):
    (guest / "etc" / "passwd").write_text("user:x:1000:1000::/home/user:/bin/bash\n")
    ssh = guest / "home" / "user" / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text("not a pem but a key by its name\n")
    os.link(ssh / "id_rsa", guest / "etc" / "backup-key")  # etc/ comes first in walk order
    (guest / "etc" / "shadow").write_text("user:$6$s$HashOfUser:19700::::::\n")
    os.link(guest / "etc" / "shadow", guest / "etc" / "aaa-shadow-copy")
    repo("commit", "-m", "links")
    repo("publish", "main")
    repo("checkout", "public/main", "--to", str(tmp_path / "out"))
    out = tmp_path / "out"
    assert not (out / "etc" / "backup-key").exists() and not (out / "home" / "user" / ".ssh" / "id_rsa").exists()
    assert (out / "etc" / "aaa-shadow-copy").read_text() == "user:!:19700::::::\n" == (out / "etc" / "shadow").read_text()
    assert os.stat(out / "etc" / "aaa-shadow-copy").st_ino == os.stat(out / "etc" / "shadow").st_ino


def test_expiring_credentials_stay_out_of_private_entries_too(repo: Vml, guest: Path, tmp_path: Path):
    (guest / "tmp").mkdir()
    (guest / "tmp" / "x509up_u1000").write_text("proxy\n")
    (guest / "tmp" / "krb5cc_1000").write_text("tickets\n")
    (guest / "var" / "lib" / "sss" / "secrets").mkdir(parents=True)
    (guest / "var" / "lib" / "sss" / "secrets" / "secrets.ldb").write_text("kcm\n")
    repo("commit", "-m", "with expiring credentials")
    repo("checkout", "main", "--to", str(tmp_path / "out"))
    out = tmp_path / "out"
    assert (out / "tmp").is_dir() and not (out / "tmp" / "x509up_u1000").exists() and not (out / "tmp" / "krb5cc_1000").exists()
    assert not (out / "var" / "lib" / "sss" / "secrets").exists()
    assert repo("status", "--json").json()["clean"]  # not even a change: they are outside what the area saves


def test_a_file_exactly_as_its_package_shipped_it_is_kept(repo: Vml, guest: Path, tmp_path: Path):
    import base64
    import hashlib

    key_like = b"-----BEGIN RSA PRIVATE KEY-----\n" + b"QUJD" * 16 + b"\n-----END RSA PRIVATE KEY-----\n"
    example = b"#!/bin/sh\n# example key of this package's tests\ncat <<EOF\n" + key_like + b"EOF\n"
    for name in ("packaged-tool", "edited-tool"):
        (guest / "usr" / "bin").mkdir(parents=True, exist_ok=True)
        (guest / "usr" / "bin" / name).write_bytes(example)
    info = guest / "var" / "lib" / "dpkg" / "info"
    info.mkdir(parents=True)
    digest = hashlib.md5(example).hexdigest()
    (info / "tools.md5sums").write_text(f"{digest}  usr/bin/packaged-tool\n{hashlib.md5(b'other').hexdigest()}  usr/bin/edited-tool\n")
    site = guest / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "testkey.py").write_bytes(b"KEY = '''" + key_like + b"'''\n")
    (site / "pkg-1.0.dist-info").mkdir()
    sha = base64.urlsafe_b64encode(hashlib.sha256((site / "pkg" / "testkey.py").read_bytes()).digest()).rstrip(b"=").decode()
    (site / "pkg-1.0.dist-info" / "RECORD").write_text(f"pkg/testkey.py,sha256={sha},100\npkg-1.0.dist-info/RECORD,,\n")
    repo("commit", "-m", "packages")
    result = repo("publish", "main", "--json").json()
    assert sorted(result["packaged"]) == ["/usr/bin/packaged-tool", "/usr/local/lib/python3.11/dist-packages/pkg/testkey.py"]
    assert [f["path"] for f in result["findings"] if f["rule"] == "private-key"] == ["/usr/bin/edited-tool"]
    repo("checkout", "public/main", "--to", str(tmp_path / "out"))
    assert (tmp_path / "out" / "usr" / "bin" / "packaged-tool").read_bytes() == example
    assert b"QUJDQUJD" not in (tmp_path / "out" / "usr" / "bin" / "edited-tool").read_bytes()


def test_a_checkout_keeps_what_the_public_entry_left_out(repo: Vml, secrets: Path):
    """Left out is unknown, not absent: the area's own key stays; what the entry holds is put back."""
    repo("commit", "-m", "first")
    repo("publish", "main")
    key = secrets / "home" / "user" / ".ssh" / "id_ed25519"
    before = key.read_bytes()
    result = repo("checkout", "public/main", "--json").json()
    assert key.read_bytes() == before and result["not_reproduced"] == []
    assert PASSWORD not in (secrets / "etc" / "fstab").read_text()  # the entry's own fstab, redacted
    assert result["restore_notice"]
    status = repo("status", "--json").json()
    assert status["clean"], status["changes"]  # the key the entry left out is not "added"


def test_an_allowlist_keeps_a_reviewed_value_by_its_salted_fingerprint(repo: Vml, guest: Path, tmp_path: Path):
    import hashlib

    example = "https://demo:demo-password-public@example.org/data"
    (guest / "home" / "user" / "README.md").write_text(f"public test server: {example}\nprivate: https://me:Real-Pw-99@example.org/\n")
    repo("commit", "-m", "docs")
    found = [f for f in repo("publish", "main", "--dry-run", "--json").json()["findings"] if f["rule"] == "url-userinfo"]
    assert len(found) == 2 and all(f["fingerprint"].startswith("hmac-sha256:") for f in found)
    fingerprint = next(f["fingerprint"] for f in found if f["lines"] == [1])
    assert hashlib.sha256(b"demo:demo-password-public").hexdigest()[:32] not in fingerprint  # salted, not a plain hash
    rules = tmp_path / "allow.toml"
    rules.write_text(f'[[allow]]\npath = "/home/user/README.md"\nrule = "url-userinfo"\nfingerprint = "{fingerprint}"\n')
    assert "demo-password-public" not in rules.read_text()
    repo("publish", "main", "--rules", str(rules))
    text = subprocess.run(["git", "--git-dir", str(repo.cwd / ".vml"), "show", "public/main:entry.toml"], capture_output=True, text=True).stdout
    assert "hmac" not in text
    repo("checkout", "public/main", "--to", str(tmp_path / "out"))
    published = (tmp_path / "out" / "home" / "user" / "README.md").read_text()
    assert example in published and "Real-Pw-99" not in published
    bad = tmp_path / "bad.toml"
    bad.write_text('[[allow]]\npath = "/x"\nrule = "url-userinfo"\nfingerprint = "demo-password-public"\n')
    assert "never holds a value" in one_line_error(repo("publish", "main", "--rules", str(bad), check=False))


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    """An SSH key and an allowed-signers file that trusts it (and a stranger's key, not trusted)."""
    key = tmp_path / "keys" / "id_ed25519"
    key.parent.mkdir()
    for name in ("id_ed25519", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key.parent / name)], check=True)
    allowed = tmp_path / "keys" / "allowed_signers"
    allowed.write_text(f"alice@example.org {(key.parent / 'id_ed25519.pub').read_text()}")
    return key, allowed


def test_signed_public_entries_verify_with_git_and_vml(repo: Vml, secrets: Path, signer: tuple[Path, Path], tmp_path: Path):
    key, allowed = signer
    repo("commit", "-m", "first")
    assert repo("publish", "main", "--sign", "--key", str(key), "--json").json()["signed"]
    git_dir = ["git", "--git-dir", str(repo.cwd / ".vml"), "-c", f"gpg.ssh.allowedSignersFile={allowed}"]
    subprocess.run([*git_dir, "verify-commit", "public/main"], check=True, capture_output=True)
    assert 'Good "git" signature for alice@example.org' in subprocess.run([*git_dir, "log", "--show-signature", "-1", "public/main"],
                                                                          capture_output=True, text=True).stdout
    remote = tmp_path / "public.vml"
    repo("init", "--bare", str(remote))
    repo("remote", "add", "origin", str(remote))
    repo("push", "origin", "public/main")
    Vml(tmp_path)("clone", str(remote), "trusting", "--verify", "--allowed-signers", str(allowed))
    trusting = Vml(tmp_path / "trusting")
    trusting("checkout", "public/main", "--to", str(tmp_path / "out"), "--verify")

    # An unsigned public entry: a verifying fetch, clone, checkout or import refuses it.
    (secrets / "home" / "user" / "notes.txt").write_text("unsigned change\n")
    repo("commit", "-m", "second")
    repo("publish", "main")
    repo("push", "origin", "public/main")
    before = git(trusting, "rev-parse", "public/main")
    refused = trusting("fetch", check=False)  # the clone keeps verifying: vml.verifySignatures
    assert "is not signed" in one_line_error(refused, code=2) and git(trusting, "rev-parse", "public/main") == before
    assert "is not signed" in one_line_error(Vml(tmp_path)("clone", str(remote), "other", "--verify", "--allowed-signers", str(allowed),
                                                            check=False), code=2)
    assert not (tmp_path / "other").exists()
    assert "is not signed" in one_line_error(repo("checkout", "public/main", "--to", str(tmp_path / "x"), "--allowed-signers", str(allowed),
                                                  check=False), code=2)
    bundle = tmp_path / "public.bundle"
    repo("export", "public/main", "-o", str(bundle))
    fresh = Vml(tmp_path / "fresh")
    (tmp_path / "fresh").mkdir()
    fresh("init")
    assert "is not signed" in one_line_error(fresh("import", str(bundle), "--verify", "--allowed-signers", str(allowed), check=False), code=2)
    assert subprocess.run(["git", "--git-dir", str(tmp_path / "fresh" / ".vml"), "for-each-ref"], capture_output=True, text=True).stdout == ""
    fresh("import", str(bundle))  # without --verify it is taken, on its public name
    assert git(fresh, "rev-parse", "public/main") == git(repo, "rev-parse", "public/main")
    stranger = repo("publish", "main", "--as", "other", "--sign", "--key", str(key.parent / "stranger"), "--json").json()["entry"]
    assert "not trusted" in one_line_error(repo("checkout", stranger, "--to", str(tmp_path / "y"), "--allowed-signers", str(allowed),
                                                check=False), code=2)
    assert "needs an SSH key" in one_line_error(repo("publish", "main", "--sign", check=False))
    trusting.fsck_clean()
    fresh.fsck_clean()


def test_the_clean_file_cache_never_hides_a_new_finding(repo: Vml, guest: Path, tmp_path: Path):
    """A publish remembers the files it found nothing in; a change of content, of the rules
    or of the allowlist is a miss, never a stale 'clean'."""
    readme = guest / "home" / "user" / "README.md"
    readme.write_text("server: https://demo:demo-pw-public@example.org/\n")
    repo("commit", "-m", "one")
    fingerprint = repo("publish", "main", "--dry-run", "--json").json()["findings"][0]["fingerprint"]
    rules = tmp_path / "allow.toml"
    rules.write_text(f'[[allow]]\npath = "/home/user/README.md"\nrule = "url-userinfo"\nfingerprint = "{fingerprint}"\n')
    repo("publish", "main", "--rules", str(rules))  # README.md is clean under this allowlist: remembered so
    assert (repo.cwd / ".vml" / "vml" / "scrub-cache").stat().st_size > 16
    without = repo("publish", "main", "--dry-run", "--json").json()  # no allowlist: another context
    assert [f["rule"] for f in without["findings"]] == ["url-userinfo"]
    notes = guest / "home" / "user" / "notes.txt"  # clean, and remembered
    repo("publish", "main", "--dry-run")
    notes.write_text("token " + TOKEN + "\n")
    repo("commit", "-m", "two")
    found = repo("publish", "main", "--dry-run", "--json").json()["findings"]
    assert {(f["path"], f["rule"]) for f in found} >= {("/home/user/notes.txt", "github-token")}
