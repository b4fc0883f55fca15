"""Whose entries to trust: the key a publish signs with, and when and against what a fetch,
clone, import or checkout checks signatures (its --verify, or the repository's
vml.verifySignatures; the keys in --allowed-signers FILE or git's gpg.ssh.allowedSignersFile,
so that `git log --show-signature` in the repository agrees with vml)."""

from __future__ import annotations

import os

from vml.entry import read_entry
from vml.errors import UsageError
from vml.refs.namespace import PUBLIC_PREFIX
from vml.repo import Repository

SIGNING_KEY = "user.signingKey"  # git's own setting: the key `git commit -S` would use
VERIFY = "vml.verifySignatures"
ALLOWED_SIGNERS = "gpg.ssh.allowedSignersFile"


def signing_key(repo: Repository, key: str | None) -> str:
    found = key or repo.git.config_get(SIGNING_KEY)
    if not found:
        raise UsageError(f"--sign needs an SSH key: --key FILE, or git config {SIGNING_KEY} FILE (in the repository)")
    return os.path.expanduser(found)


def allowed_signers(repo: Repository, verify: bool, signers: str | None, *, public: bool = True) -> str | None:
    """The allowed-signers file to check entries against; None when nothing asks for a check
    (--verify or --allowed-signers asks for every entry the command brings; the repository's
    vml.verifySignatures for public ones)."""
    configured = public and (repo.git.config_get(VERIFY) or "").lower() in ("true", "yes", "on", "1")
    required = verify or signers is not None or configured
    if not required:
        return None
    found = signers or repo.git.config_get(ALLOWED_SIGNERS)
    if not found:
        raise UsageError(f"checking signatures needs the keys you trust: --allowed-signers FILE, or git config {ALLOWED_SIGNERS} FILE "
                         f"(lines 'PRINCIPAL KEYTYPE KEY', as for git)")
    return os.path.expanduser(found)


def check_entry(repo: Repository, entry: str, verify: bool, signers: str | None) -> None:
    """Before a checkout or an import names it: the entry's signature, when one is asked for."""
    path = allowed_signers(repo, verify, signers, public=read_entry(repo.git, entry).scrub is not None)
    if path is not None:
        repo.git.verify_signature(entry, path)


def verify_public(repo: Repository, moving: dict[str, str], signers: str | None) -> None:
    """Check the entries public refs are about to name (ref -> entry); BadSignature stops all."""
    if signers is None:
        return
    for ref, entry in sorted(moving.items()):
        if ref.startswith(PUBLIC_PREFIX):
            repo.git.verify_signature(entry, signers)
