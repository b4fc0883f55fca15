"""Helpers shared by tests that look at a repository's files and at restored trees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def store_dir(tmp_path: Path) -> Path:
    return tmp_path / ".vml" / "vml" / "store"


def pack_files(tmp_path: Path) -> set[Path]:
    return set((store_dir(tmp_path) / "packs").glob("*/*.pack"))


def tree_digest(root: Path) -> dict[str, str]:
    """Every directory, symlink target and file content digest under root, by relative path."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            found[str(path.relative_to(root)) + "/"] = "link:" + os.readlink(path) if path.is_symlink() else "dir"
        for name in filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            else:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
