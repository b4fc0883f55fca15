"""Exchanging entries between repositories: remotes (push, fetch) and bundle files."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """What a transfer has moved so far, for progress bars."""

    done: int
    total: int
