"""vml's porcelain: one function per command, each returning a frozen dataclass; none prints
(render.py does). One module per command family; this file only re-exports their names."""

from vml.api._common import Progress, entry_info, resolve_entry
from vml.api.areas import AreaInfo, AreaOptions, AreaRemoved, AreaShow, area_add, area_info, area_list, area_remove, area_show
from vml.api.bases import BaseInfo, BootFiles, base_add, base_list
from vml.api.bundles import ExportResult, ImportResult, export, import_bundle
from vml.api.checkout import CheckoutResult, checkout, switch
from vml.api.commit import CommitResult, commit
from vml.api.diff import PATCH_LIMIT, DiffEntry, StatusResult, diff, status
from vml.api.log import LogEntry, ShowResult, log, show, show_file
from vml.api.maintenance import DamagedEntry, FsckReport, GcResult, InitResult, fsck, gc, init
from vml.api.publish import PublishResult, commit_public, publish
from vml.api.refs import ReflogEntry, RefResult, RmResult, branch_delete, branch_list, ref_create, reflog, rm, tag_delete, tag_list
from vml.api.remotes import (
    CloneResult,
    FetchResult,
    PullResult,
    PushResult,
    RemoteGcResult,
    RemoteInfo,
    clone,
    fetch,
    gc_remote,
    pull,
    push,
    remote_add,
    remote_list,
    remote_remove,
)
from vml.api.vm import VM_ACTIONS, VmState, vm_action, vm_info
from vml.areas.protocol import Notice
from vml.pathnames import parse_paths
from vml.refs.updates import RefChange

__all__ = [
    "Notice", "Progress", "entry_info", "parse_paths", "resolve_entry",
    "AreaInfo", "AreaOptions", "AreaRemoved", "AreaShow", "area_add", "area_info", "area_list", "area_remove", "area_show",
    "BaseInfo", "BootFiles", "base_add", "base_list",
    "ExportResult", "ImportResult", "export", "import_bundle",
    "CheckoutResult", "checkout", "switch",
    "CommitResult", "commit",
    "PATCH_LIMIT", "DiffEntry", "StatusResult", "diff", "status",
    "LogEntry", "ShowResult", "log", "show", "show_file",
    "DamagedEntry", "FsckReport", "GcResult", "InitResult", "fsck", "gc", "init",
    "ReflogEntry", "RefResult", "RmResult", "branch_delete", "branch_list", "ref_create", "reflog", "rm", "tag_delete", "tag_list",
    "CloneResult", "FetchResult", "PullResult", "PushResult", "RefChange", "RemoteGcResult", "RemoteInfo", "clone", "fetch", "gc_remote",
    "pull", "push",
    "remote_add", "remote_list", "remote_remove",
    "VM_ACTIONS", "VmState", "vm_action", "vm_info",
    "PublishResult", "commit_public", "publish",
]
