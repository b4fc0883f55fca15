"""Public entries' scrubber: a stored tree streamed through path rules, format-aware
redactors and a content scan into a new tree that holds none of the user's secrets (see
docs/PUBLIC.md). Nothing here prints or touches refs: vml/api/publish.py drives it."""
