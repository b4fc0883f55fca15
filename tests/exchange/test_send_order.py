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
