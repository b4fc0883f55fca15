"""Entries signed with SSH keys: vml's own check and git's (`verify-commit`, `log
--show-signature`, with gpg.ssh.allowedSignersFile) agree on what is good and what is not."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pygit2
import pytest

from vml.errors import BadSignature, SignatureError, UnknownEntry
from vml.signing import Signer, commit_signature, create_signed_commit, sign, verify, verify_commit

WHEN = 1_700_000_000  # a fixed commit time, so that a signed entry's id can be compared with git's


def make_key(directory: Path, name: str, passphrase: str = "") -> Path:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", str(path)], check=True)
    return path


def fingerprint(public_key: Path) -> str:
    done = subprocess.run(["ssh-keygen", "-l", "-f", str(public_key)], capture_output=True, text=True, check=True)
    return done.stdout.split()[1]


def allow(path: Path, principal: str, key: Path, options: str = "") -> Path:
    """An allowed-signers file (ssh-keygen(1) ALLOWED SIGNERS) trusting one key."""
    path.write_text(f"{principal} {options + ' ' if options else ''}{key.with_suffix('.pub').read_text()}")
    return path


@pytest.fixture(autouse=True)
def no_agent_of_the_caller(monkeypatch):
    # A developer's own agent (or askpass program) must not decide what these tests see.
    for name in ("SSH_AUTH_SOCK", "SSH_ASKPASS", "DISPLAY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def alice(tmp_path) -> Path:
    return make_key(tmp_path, "alice")


@pytest.fixture
def allowed(tmp_path, alice) -> Path:
    return allow(tmp_path / "allowed_signers", "alice@example.org", alice)


@pytest.fixture
def repo(tmp_path):
    repo = pygit2.init_repository(str(tmp_path / "repo.git"), bare=True, initial_head="main")
    yield repo
    done = git(repo, "fsck", "--full", "--strict", "--no-dangling")
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def git(repo: pygit2.Repository, *args: str, allowed: Path | None = None) -> subprocess.CompletedProcess[str]:
    options = ["-c", f"gpg.ssh.allowedSignersFile={allowed}"] if allowed else []
    return subprocess.run(["git", f"--git-dir={repo.path}", *options, *args], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})


def entry(repo: pygit2.Repository, key: Path, message: str = "first entry\n", parents: list[str] | None = None) -> str:
    builder = repo.TreeBuilder()
    builder.insert("manifest", repo.create_blob(b"the files of an environment\n"), pygit2.GIT_FILEMODE_BLOB)
    person = pygit2.Signature("Alice", "alice@example.org", WHEN, 60)
    commit_id = create_signed_commit(repo, builder.write(), message, person, person, parents or [], str(key))
    repo.references.create("refs/heads/main", commit_id, force=True)
    return commit_id


def test_a_signed_entry_verifies_with_vml_and_with_git(repo, alice, allowed):
    commit_id = entry(repo, alice)
    second = entry(repo, alice, "second entry\n", [commit_id])

    assert verify_commit(repo, second, str(allowed)) == Signer("alice@example.org", fingerprint(alice.with_suffix(".pub")))
    for signed in (commit_id, second):
        assert git(repo, "verify-commit", signed, allowed=allowed).returncode == 0
    shown = git(repo, "log", "--show-signature", "main", allowed=allowed)
    assert shown.returncode == 0 and shown.stdout.count('Good "git" signature for alice@example.org with ED25519 key') == 2, shown.stdout
    assert repo.references["refs/heads/main"].target == pygit2.Oid(hex=second)  # only the test moved the ref


def test_a_signed_entry_is_byte_for_byte_what_git_commit_S_writes(tmp_path, repo, alice):
    """Ed25519 signatures are deterministic, so git's own signed commit of the same tree,
    people and time has the same id: the header, the namespace and the armor are git's."""
    commit_id = entry(repo, alice)
    tree = str(repo[commit_id].tree_id)
    people = {f"GIT_{role}_{field}": value for role in ("AUTHOR", "COMMITTER")
              for field, value in (("NAME", "Alice"), ("EMAIL", "alice@example.org"), ("DATE", f"{WHEN} +0100"))}
    done = subprocess.run(["git", f"--git-dir={repo.path}", "-c", "gpg.format=ssh", "-c", f"user.signingKey={alice}",
                           "commit-tree", "-S", "-m", "first entry", tree],
                          capture_output=True, text=True, env={**os.environ, **people}, check=True)
    assert done.stdout.strip() == commit_id
    signature, signed = commit_signature(repo, commit_id)
    assert signature.startswith(b"-----BEGIN SSH SIGNATURE-----\n") and b"gpgsig" not in signed
    assert signed == repo.create_commit_string(repo[commit_id].author, repo[commit_id].committer, "first entry\n", tree, []).encode()


def test_a_signer_the_allowed_signers_do_not_list_is_refused(tmp_path, repo, allowed):
    bob = make_key(tmp_path, "bob")
    commit_id = entry(repo, bob)

    refusal = f"entry {commit_id}: the signature is good but its key {fingerprint(bob.with_suffix('.pub'))} is not trusted by {allowed}"
    with pytest.raises(BadSignature, match=f"^{re.escape(refusal)}$"):
        verify_commit(repo, commit_id, str(allowed))
    assert git(repo, "verify-commit", commit_id, allowed=allowed).returncode != 0


def test_an_entry_changed_after_signing_is_refused(repo, alice, allowed):
    commit_id = entry(repo, alice)
    original = repo[commit_id]
    signature, _signed = commit_signature(repo, commit_id)
    changed = repo.create_commit_string(original.author, original.committer, "a message the signer never saw\n", original.tree_id, [])
    tampered = str(repo.create_commit_with_signature(changed, signature.decode().rstrip("\n"), "gpgsig"))

    with pytest.raises(BadSignature, match=f"entry {tampered}: the signature does not match the signed data: it was changed after signing"):
        verify_commit(repo, tampered, str(allowed))
    assert git(repo, "verify-commit", tampered, allowed=allowed).returncode != 0
    assert verify_commit(repo, commit_id, str(allowed)).principal == "alice@example.org"


def test_an_unsigned_entry_is_refused(repo, allowed):
    tree = repo.TreeBuilder().write()
    person = pygit2.Signature("Alice", "alice@example.org")
    commit_id = str(repo.create_commit("refs/heads/main", person, person, "unsigned\n", tree, []))

    assert commit_signature(repo, commit_id) is None
    with pytest.raises(BadSignature, match=f"^entry {commit_id} is not signed$"):
        verify_commit(repo, commit_id, str(allowed))
    assert git(repo, "verify-commit", commit_id, allowed=allowed).returncode != 0
    with pytest.raises(UnknownEntry, match=f"^no entry {'0' * 40}$"):
        verify_commit(repo, "0" * 40, str(allowed))
    with pytest.raises(UnknownEntry, match=f"^{tree} is not an entry$"):
        commit_signature(repo, str(tree))


def test_a_key_outside_its_validity_is_refused_at_the_entrys_time(tmp_path, repo, alice):
    commit_id = entry(repo, alice)  # made (by its committer date) in November 2023
    expired = allow(tmp_path / "expired", "alice@example.org", alice, 'valid-before="20230101"')
    later = allow(tmp_path / "later", "alice@example.org", alice, 'valid-after="20230101"')

    with pytest.raises(BadSignature, match="not trusted by"):
        verify_commit(repo, commit_id, str(expired))
    assert verify_commit(repo, commit_id, str(later)).principal == "alice@example.org"
    assert [git(repo, "verify-commit", commit_id, allowed=f).returncode == 0 for f in (expired, later)] == [False, True]


def test_a_public_key_signs_with_its_private_half_in_ssh_agent(tmp_path, monkeypatch, allowed, alice):
    socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket))
        subprocess.run(["ssh-add", "-q", str(alice)], check=True, capture_output=True)
        alice.unlink()  # only the agent can sign now
        signature = sign(b"data", str(alice.with_suffix(".pub")))
    finally:
        agent.terminate()
        agent.wait()
    assert verify(b"data", signature, str(allowed)).principal == "alice@example.org"


def test_signing_problems_are_one_line_errors(tmp_path, monkeypatch):
    locked = make_key(tmp_path, "locked", passphrase="secret words")
    with pytest.raises(SignatureError, match=f"^cannot sign with {locked}: it is protected by a passphrase; add it to ssh-agent"):
        sign(b"data", str(locked))
    with pytest.raises(SignatureError, match=f"^cannot sign: no SSH key at {tmp_path}/nowhere$"):
        sign(b"data", str(tmp_path / "nowhere"))
    with pytest.raises(SignatureError, match=f"^cannot verify: no allowed signers file at {tmp_path}/none$"):
        verify(b"data", b"signature", str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SignatureError, match=r"^cannot sign: ssh-keygen is not installed \(Debian package openssh-client\)$"):
        sign(b"data", str(locked))


def test_signatures_that_are_not_for_this_data_or_purpose_are_refused(alice, allowed):
    with pytest.raises(BadSignature, match="^not a valid SSH signature"):
        verify(b"data", b"-----BEGIN PGP SIGNATURE-----\nnonsense\n", str(allowed))
    with pytest.raises(BadSignature, match="^the signature was made for another purpose"):
        verify(b"data", sign(b"data", str(alice), namespace="file"), str(allowed))
    with pytest.raises(BadSignature, match="changed after signing"):
        verify(b"other data", sign(b"data", str(alice)), str(allowed))
    assert verify(b"data", sign(b"data", str(alice), namespace="file"), str(allowed), namespace="file").principal == "alice@example.org"
