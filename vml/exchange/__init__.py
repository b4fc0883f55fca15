"""Exchanging entries between repositories: remotes (push, fetch) and bundle files."""
