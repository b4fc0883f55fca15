"""The order push and export send blobs in: every listing after all listings and chunks
below it, even when one listing (an empty directory, a copied subtree) sits at several
depths. A transfer cut off anywhere then never leaves a listing without its subtree."""

from __future__ import annotations

from pathlib import Path

from vml.objects.manifest import KIND_DIR, decode_listing
from vml.objects.walk import missing_blobs


def test_children_always_come_before_their_parents(repo, guest: Path, tmp_path: Path):
    for path in ("a/empty", "b/c/d/empty", "b/c/d/e/f/empty", "x/copy", "y/z/copy"):
        (guest / path).mkdir(parents=True)
    for copy in ("x/copy", "y/z/copy"):
        (guest / copy / "same.txt").write_text("the same file in two places\n")
        (guest / copy / "deeper").mkdir()
    repo("commit", "-m", "shared subtrees")
    from vml.api import resolve_entry
    from vml.entry import entry_root
    from vml.repo import Repository

    local = Repository.discover(str(tmp_path))
    root = entry_root(local.git, resolve_entry(local, "HEAD", "wa1"))
    store = local.store
    listings, chunks = missing_blobs(lambda ids: [store.get(i) for i in ids], [root], lambda _blob: False)
    position = {listing_id: index for index, (listing_id, _data) in enumerate(listings)}
    assert len(position) == len(listings), "each listing is sent once"
    assert root in position and position[root] == len(listings) - 1
    for listing_id, data in listings:
        for node in decode_listing(data, root=listing_id == root).nodes:
            if node.kind == KIND_DIR:
                assert position[node.tree] < position[listing_id]
    assert chunks  # the file's content
    have_all = {listing_id for listing_id, _data in listings} | set(chunks)
    assert missing_blobs(lambda ids: [store.get(i) for i in ids], [root], have_all.__contains__) == ([], [])
    local.close()


def test_what_an_entry_adds_is_found_where_the_trees_differ(repo, guest: Path, tmp_path: Path):
    """shared_blobs: the blobs of the entry a transfer builds on, read only along the paths
    where the new tree differs. With them, missing_blobs sends exactly the new chunks and the
    listings on the way to them, and reads no listing of an unchanged subtree."""
    import os

    from vml.api import resolve_entry
    from vml.entry import entry_root
    from vml.objects.walk import shared_blobs
    from vml.repo import Repository

    for number in range(30):
        (guest / "lib" / f"pkg{number}").mkdir(parents=True)
        (guest / "lib" / f"pkg{number}" / "data").write_bytes(os.urandom(5000))
    (guest / "home" / "user" / "notes.txt").write_text("before\n")
    repo("commit", "-m", "old")
    (guest / "home" / "user" / "notes.txt").write_text("after\n")
    (guest / "home" / "user" / "new.bin").write_bytes(os.urandom(7000))
    repo("commit", "-m", "new")
    local = Repository.discover(str(tmp_path))
    old, new = (entry_root(local.git, resolve_entry(local, spec, "wa1")) for spec in ("HEAD~1", "HEAD"))
    store = local.store
    read: list[bytes] = []

    def load(ids: list[bytes]) -> list[bytes]:
        read.extend(ids)
        return [store.get(i) for i in ids]

    known = shared_blobs(load, load, [(old, new)])
    listings, chunks = missing_blobs(lambda ids: [store.get(i) for i in ids], [new], known.__contains__)
    assert len(listings) == 4  # the root's, the top directory's, home's and home/user's: nothing in lib
    assert len(chunks) == 2  # notes.txt's new content and new.bin
    top = decode_listing(store.get(old), root=True).nodes[0].tree
    old_lib = next(node.tree for node in decode_listing(store.get(top)).nodes if node.name == b"lib")
    assert old_lib in known and old_lib not in read  # an unchanged subtree: known by its id, never opened
    assert len(read) <= 8  # the changed directories on both sides, not the 30 packages
    local.close()
