"""vml/refs: naming entries (ids, refs, ancestry, reflog positions)."""
