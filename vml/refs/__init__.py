"""The DAG of entries: git commits, branches, tags, area HEADs and reflogs (over pygit2)."""
