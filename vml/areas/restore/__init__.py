"""Restoring a saved tree onto a working area: the local filesystem (local.py) or a guest,
with one tar stream (guest.py)."""

from vml.areas.restore.guest import GuestPlan, plan_restore, write_tar
from vml.areas.restore.local import Restore, RestoreProgress, remove_partial

__all__ = ["GuestPlan", "Restore", "RestoreProgress", "plan_restore", "remove_partial", "write_tar"]
