"""Signing and verifying entries with SSH keys, as git's `gpg.format=ssh` does: the one
module that runs `ssh-keygen -Y`, so that `git verify-commit` accepts what vml signs.

An entry's signature is an armored SSHSIG over the commit object's bytes without its
`gpgsig` header, in namespace "git", stored in that header; an allowed-signers file (git's
`gpg.ssh.allowedSignersFile`) says whose keys are trusted.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from vml.errors import BadSignature, SignatureError, UnknownEntry

if TYPE_CHECKING:  # the caller's repository: vml.refs.git stays the module that imports pygit2
    import pygit2

# What ssh-keygen prints for a good signature: 'Good "git" signature for P with ED25519 key SHA256:...'.
_GOOD = re.compile(r'^Good "[^"]*" signature (?:for (?P<principal>.+) )?with \S+ key (?P<fingerprint>\S+)', re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Signer:
    principal: str  # as the allowed-signers file names it
    fingerprint: str  # "SHA256:..." as ssh-keygen -l shows it


def _ssh_keygen(args: list[str], data: bytes, *, action: str) -> subprocess.CompletedProcess[bytes]:
    """Run ssh-keygen with `data` on its input, in a session of its own: with no terminal it
    cannot stop to ask for a passphrase, so a locked key fails instead of hanging."""
    try:
        return subprocess.run(["ssh-keygen", *args], input=data, capture_output=True, start_new_session=True,
                              env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise SignatureError(f"cannot {action}: ssh-keygen is not installed (Debian package openssh-client)") from None


def _complaint(done: subprocess.CompletedProcess[bytes]) -> str:
    lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"ssh-keygen exited with status {done.returncode}"


def sign(data: bytes, key: str, namespace: str = "git") -> bytes:
    """The armored SSH signature of `data`. `key` is a private key file, or a public key file
    whose private half ssh-agent holds (git's user.signingKey)."""
    key = os.path.expanduser(key)
    if not os.path.exists(key):
        raise SignatureError(f"cannot sign: no SSH key at {key}")
    done = _ssh_keygen(["-Y", "sign", "-n", namespace, "-f", key], data, action="sign")
    if done.returncode == 0 and done.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return done.stdout
    complaint = _complaint(done)
    if "passphrase" in complaint:
        raise SignatureError(f"cannot sign with {key}: it is protected by a passphrase; add it to ssh-agent (ssh-add {key})")
    raise SignatureError(f"cannot sign with {key}: {complaint}")


def verify(data: bytes, signature: bytes, allowed_signers: str, namespace: str = "git", *, at: int | None = None) -> Signer:
    """Who signed `data`, if the signature is good and its key is in `allowed_signers`.
    `at` (seconds since the epoch) is when it was signed, checked against the key's
    valid-after and valid-before, as git does with the committer's date."""
    if not os.path.isfile(allowed_signers):
        raise SignatureError(f"cannot verify: no allowed signers file at {allowed_signers}")
    options = [f"-Overify-time={time.strftime('%Y%m%d%H%M%S', time.gmtime(at))}Z"] if at is not None else []
    with tempfile.TemporaryDirectory(prefix="vml-signature-") as scratch:
        signature_file = os.path.join(scratch, "signature")
        with open(signature_file, "wb") as out:
            out.write(signature)
        found = _ssh_keygen(["-Y", "find-principals", "-f", allowed_signers, "-s", signature_file, *options], b"", action="verify")
        if found.returncode != 0:
            raise _refusal(_check_without_signers(data, signature_file, namespace), allowed_signers)
        failures = []
        for principal in found.stdout.decode(errors="replace").splitlines():
            done = _ssh_keygen(["-Y", "verify", "-n", namespace, "-f", allowed_signers, "-I", principal, "-s", signature_file, *options],
                               data, action="verify")
            good = _GOOD.search(done.stdout.decode(errors="replace"))
            if done.returncode == 0 and good:
                return Signer(principal, good["fingerprint"])
            failures.append(done)
    raise _refusal(failures[0] if failures else found, allowed_signers)


def _check_without_signers(data: bytes, signature_file: str, namespace: str) -> subprocess.CompletedProcess[bytes]:
    """Whether the signature holds at all, for saying why none of the allowed signers made it."""
    return _ssh_keygen(["-Y", "check-novalidate", "-n", namespace, "-s", signature_file], data, action="verify")


def _refusal(done: subprocess.CompletedProcess[bytes], allowed_signers: str) -> BadSignature:
    good = _GOOD.search(done.stdout.decode(errors="replace"))
    if done.returncode == 0 and good:  # sound, but made by a key nobody listed
        return BadSignature(f"the signature is good but its key {good['fingerprint']} is not trusted by {allowed_signers}")
    complaint = _complaint(done)
    if "incorrect signature" in complaint:
        return BadSignature("the signature does not match the signed data: it was changed after signing")
    if "namespace" in complaint:
        return BadSignature(f"the signature was made for another purpose ({complaint})")
    if "parse signature" in complaint or "sshsig" in complaint:
        return BadSignature(f"not a valid SSH signature ({complaint})")
    return BadSignature(f"the signature does not verify: {complaint}")


def create_signed_commit(repo: pygit2.Repository, tree_id: pygit2.Oid | str, message: str, author: pygit2.Signature,
                         committer: pygit2.Signature, parents: Sequence[pygit2.Oid | str], key: str) -> str:
    """Write a commit signed with `key` as git commit -S does; no ref moves (the caller moves one)."""
    buffer = str(repo.create_commit_string(author, committer, message, tree_id, list(parents)))  # text, whatever its stub says
    signature = sign(buffer.encode(), key).decode("ascii")
    # git writes the armor's lines into the header with no empty continuation line after them.
    return str(repo.create_commit_with_signature(buffer, signature.rstrip("\n"), "gpgsig"))


def _commit(repo: pygit2.Repository, commit_id: str) -> pygit2.Commit:
    try:
        raw = repo[commit_id]
    except (KeyError, ValueError):
        raise UnknownEntry(f"no entry {commit_id}") from None
    if raw.type_str != "commit":
        raise UnknownEntry(f"{commit_id} is not an entry")
    return cast("pygit2.Commit", raw)


def commit_signature(repo: pygit2.Repository, commit_id: str) -> tuple[bytes, bytes] | None:
    """(signature, the bytes it signs) of an entry, or None if it is not signed."""
    signature, signed = _commit(repo, commit_id).gpg_signature
    return None if signature is None else (signature, signed)


def verify_commit(repo: pygit2.Repository, commit_id: str, allowed_signers: str) -> Signer:
    """Who signed the entry, or a SignatureError saying why it cannot be trusted."""
    found = commit_signature(repo, commit_id)
    if found is None:
        raise BadSignature(f"entry {commit_id} is not signed")
    signature, signed = found
    try:
        return verify(signed, signature, allowed_signers, at=_commit(repo, commit_id).commit_time)
    except BadSignature as refused:
        raise BadSignature(f"entry {commit_id}: {refused}") from None
