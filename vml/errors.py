"""The one error base of vml and the exit codes the command line maps errors to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_DAMAGE = 1  # fsck found damage; a read found a corrupt object
EXIT_USAGE = 2  # bad input: unknown entry, bad name, refused by a safety check
EXIT_FAILURE = 3  # an environment problem: disk full, permission, lock


class VmlError(Exception):
    """An error a user can act on; its message is one line, shown without a traceback."""

    exit_code = EXIT_FAILURE


class UsageError(VmlError):
    exit_code = EXIT_USAGE


class NotARepository(UsageError):
    pass


class UnknownEntry(UsageError):
    pass


class BaseMissing(UsageError):
    """Something needs a base image the repository lacks: `what` says what ("the entry sits
    on base X"), `base` is NAME:VERSION; `catalog_url` is where a catalog offers it (vml base
    fetch), `auto_fetch` whether the user lets vml fetch it unasked."""

    def __init__(self, message: str, base: str, what: str, catalog_url: str | None = None, auto_fetch: bool = False):
        super().__init__(message)
        self.base, self.what, self.catalog_url, self.auto_fetch = base, what, catalog_url, auto_fetch


class UnknownArea(UsageError):
    """No area of that name, or none chosen where several exist."""


class AreaError(VmlError):
    """A working area's files cannot be reached or written: its guest does not answer, its
    connection dropped, its directory or domain is gone (an environment problem, exit 3)."""


class LocalChanges(UsageError):
    """A checkout would overwrite changes made since the area's last entry."""

    def __init__(self, message: str, paths: list[str]):
        super().__init__(message)
        self.paths = paths


class UnsafePath(VmlError):
    """A manifest names a path that would escape the restore target."""

    exit_code = EXIT_DAMAGE


class CorruptObject(VmlError):
    """Stored bytes do not match their id, or a pack or index is damaged."""

    exit_code = EXIT_DAMAGE


class MissingObject(CorruptObject):
    pass


class TransportError(VmlError):
    """The other side (a remote repository, a guest's sshd) could not be reached or answered
    wrongly; nothing was lost."""


class ConcurrentUpdate(VmlError):
    """A ref moved underneath us; the caller may retry."""


class SignatureError(VmlError):
    """An entry cannot be signed or checked: no key, a key locked by a passphrase and not in
    ssh-agent, no ssh-keygen, no allowed-signers file (an environment problem, exit 3)."""


class BadSignature(SignatureError):
    """An entry's signature is missing, damaged, made by an untrusted key, or does not match
    the entry: refused by a safety check (exit 2)."""

    exit_code = EXIT_USAGE
