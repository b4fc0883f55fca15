"""vml's porcelain: one function per command, each returning a frozen dataclass; none prints
(render.py does). One module per command family; this file only names where each lives.

A name's module is imported when the name is first used, so that a short command (log,
diff, status) does not pay for the imports of every other command (capture, exchange,
scrub, bundles): see `_Api`."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

_NAMES = {
    "vml.api._common": "Progress entry_info resolve_entry",
    "vml.api.areas": "AreaInfo AreaOptions AreaRemoved AreaShow area_add area_info area_list area_preset area_remove area_show",
    "vml.api.bases": "BaseInfo BootFiles base_add base_list",
    "vml.api.bundles": "ExportResult ImportResult export import_bundle",
    "vml.api.catalog": "BaseFetchResult CatalogInfo base_fetch catalog_add catalog_list catalog_remove catalog_show",
    "vml.api.checkout": "CheckoutResult checkout switch",
    "vml.api.commit": "CommitResult commit",
    "vml.api.deploy": "DeployResult DeployedVm ReleaseResult deploy deploy_list release",
    "vml.api.diff": "PATCH_LIMIT DiffEntry StatusResult diff status",
    "vml.api.image": "ImageResult image_build",
    "vml.api.log": "LogEntry ShowResult log show show_file",
    "vml.api.maintenance": "DamagedEntry FsckReport GcResult InitResult fsck gc init",
    "vml.api.publish": "PublishResult commit_public publish",
    "vml.api.refs": "ReflogEntry RefResult RmResult branch_delete branch_list ref_create reflog rm tag_delete tag_list",
    "vml.api.remotes": "CloneResult FetchResult PullResult PushResult RemoteGcResult RemoteInfo clone fetch gc_remote pull push "
                       "remote_add remote_list remote_remove",
    "vml.api.shares": "ShareInfo ShareResult share_add share_list share_mount share_remove",
    "vml.api.vm": "VM_ACTIONS VmState vm_action vm_info",
    "vml.areas.protocol": "Notice",
    "vml.pathnames": "parse_paths",
    "vml.refs.updates": "RefChange",
}
_HOMES = {name: module for module, names in _NAMES.items() for name in names.split()}


class _Api(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule sets it on its package; four commands share their module's
        # name (diff, log, commit, checkout), and the command keeps the name, as it did when
        # this file imported everything.
        if isinstance(value, types.ModuleType) and name in _HOMES:
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | _HOMES.keys())


sys.modules[__name__].__class__ = _Api

if TYPE_CHECKING:
    from vml.api._common import Progress, entry_info, resolve_entry
    from vml.api.areas import (
        AreaInfo,
        AreaOptions,
        AreaRemoved,
        AreaShow,
        area_add,
        area_info,
        area_list,
        area_preset,
        area_remove,
        area_show,
    )
    from vml.api.bases import BaseInfo, BootFiles, base_add, base_list
    from vml.api.bundles import ExportResult, ImportResult, export, import_bundle
    from vml.api.catalog import BaseFetchResult, CatalogInfo, base_fetch, catalog_add, catalog_list, catalog_remove, catalog_show
    from vml.api.checkout import CheckoutResult, checkout, switch
    from vml.api.commit import CommitResult, commit
    from vml.api.diff import PATCH_LIMIT, DiffEntry, StatusResult, diff, status
    from vml.api.image import ImageResult, image_build
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
    from vml.api.shares import ShareInfo, ShareResult, share_add, share_list, share_mount, share_remove
    from vml.api.vm import VM_ACTIONS, VmState, vm_action, vm_info
    from vml.areas.protocol import Notice
    from vml.pathnames import parse_paths
    from vml.refs.updates import RefChange

__all__ = [
    "Notice", "Progress", "entry_info", "parse_paths", "resolve_entry",
    "AreaInfo", "AreaOptions", "AreaRemoved", "AreaShow", "area_add", "area_info", "area_list", "area_preset", "area_remove", "area_show",
    "BaseInfo", "BootFiles", "base_add", "base_list",
    "ExportResult", "ImportResult", "export", "import_bundle",
    "BaseFetchResult", "CatalogInfo", "base_fetch", "catalog_add", "catalog_list", "catalog_remove", "catalog_show",
    "CheckoutResult", "checkout", "switch",
    "CommitResult", "commit",
    "PATCH_LIMIT", "DiffEntry", "StatusResult", "diff", "status",
    "LogEntry", "ShowResult", "log", "show", "show_file",
    "ImageResult", "image_build",
    "DamagedEntry", "FsckReport", "GcResult", "InitResult", "fsck", "gc", "init",
    "ReflogEntry", "RefResult", "RmResult", "branch_delete", "branch_list", "ref_create", "reflog", "rm", "tag_delete", "tag_list",
    "CloneResult", "FetchResult", "PullResult", "PushResult", "RefChange", "RemoteGcResult", "RemoteInfo", "clone", "fetch", "gc_remote",
    "pull", "push",
    "remote_add", "remote_list", "remote_remove",
    "VM_ACTIONS", "VmState", "vm_action", "vm_info",
    "ShareInfo", "ShareResult", "share_add", "share_list", "share_mount", "share_remove",
    "PublishResult", "commit_public", "publish",
]
