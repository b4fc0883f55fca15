"""The pages of `vml serve`: server-rendered HTML that works without JavaScript.

A page shows only what its caller may read, by the rules the API follows (access.py,
exchange.py): the namespaces they belong to, and the public entries of the others. An
entry named in a URL must be reachable from a ref the caller sees in that namespace; for
anything else the answer is one 404 page, whether it exists or not. A directory page reads
only the listings on the way to it, never the whole tree. Paths in URLs are the names'
raw bytes, percent-encoded, read from the raw request path, so %2F and .. are refused, not
interpreted, and a name that is not UTF-8 still has a URL.

    GET  /                                 the namespaces the caller may read
    GET  /login, POST /login               a token in, an HttpOnly SameSite=Strict cookie out
    POST /logout
    GET  /NS                               its refs and entries, newest first (?skip=N)
    GET  /NS/graph                         the entries as a graph, like `vml log --graph --all`
    GET  /NS/diff?old=ID&new=ID            what changed, as `vml diff -p`
    GET  /NS/e/ID                          one entry: message, area, base, sizes, scrub report
    GET  /NS/e/ID/tree/PATH                a directory (?page=N)
    GET  /NS/e/ID/file/PATH                a file shown (text) or described
    GET  /NS/e/ID/raw/PATH                 a file downloaded
    GET  /NS/e/ID/bundle                   the entry as a full bundle, which `vml import` takes
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import itertools
import os
import re
import secrets
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from vml.api.diff import DiffEntry, diff_entry, env_diff
from vml.api.log import LogEntry
from vml.entry import EntryInfo, entry_files, entry_root, read_entry
from vml.errors import CorruptObject, UnknownEntry, UsageError, VmlError
from vml.exchange.bundle import FULL, write_bundle
from vml.objects.diff import PROPERTIES, diff_paths
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_NAMES, KIND_SYMLINK, Node, node_from_item
from vml.objects.store import ChunkStore
from vml.objects.walk import listing_loader, read_content, root_node
from vml.pathnames import quote_path
from vml.refs.bases import BaseName
from vml.refs.git import GitDag
from vml.refs.namespace import BASE_PREFIX, BRANCH_PREFIX, PUBLIC_PREFIX, TAG_PREFIX, short_name
from vml.render import graph_prefixes, size
from vml.server.access import NAMESPACES, READ, may, role
from vml.server.accounts import ANONYMOUS, NAME, RESERVED, Caller
from vml.server.app import HttpError, Server
from vml.server.exchange import NotFound, ServerRepository

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE_ENTRIES = 100  # entries per page of a namespace
GRAPH_ENTRIES = 400
DIRECTORY_PAGE = 500  # names per page of a directory: a directory of 100,000 stays a small page
DIFF_CHANGES = 2000  # changed paths one diff page names
DIFF_PATCHES = 100  # files of which it shows the unified diff...
PATCH_FILE = 1 << 20  # ...each at most this large on both sides
PATCH_TEXT = 200_000  # characters of one file's diff shown
SHOWN_FILE = 1 << 20  # bytes of a text file shown in its page
SCRUB_SHOWN = 200  # paths of a scrub report's lists shown
STREAM_PIECE = 1 << 20
SUMMARIES = 256  # trees whose counts and stored size are remembered
MAX_FORM = 64 * 1024

SESSION = "vml_session"
LOGIN_NONCE = "vml_login"  # the login form's own token (double submit): no site can post a login for another
ENTRY_ID = re.compile(r"[0-9a-f]{40}")
LOGIN_NONCE_FORM = re.compile(r"[A-Za-z0-9_-]{32}")
NOT_FOUND = "There is nothing here that you may see: it does not exist, or it belongs to a namespace you cannot read."
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class BadPath(UsageError):
    """A path in a URL that steps out of the entry or names nothing a tree can hold (HTTP 400)."""


# -- what pages show


@dataclass(frozen=True, slots=True)
class NamespaceRow:
    name: str
    access: str  # the caller's role there, or "public"
    branches: int
    tags: int
    public: int


@dataclass(frozen=True, slots=True)
class RefRow:
    name: str  # as users type it: main, v1, public/main, base name/version
    kind: str
    entry: str


@dataclass(frozen=True, slots=True)
class NodeRow:
    name: str  # quoted as git quotes odd names
    path: str  # the path's bytes percent-encoded, for URLs
    kind: str
    mode: str
    owner: str
    size: int
    mtime: str
    target: str | None  # a symlink's


@dataclass(frozen=True, slots=True)
class TreeSummary:
    directories: int
    symlinks: int
    other: int
    stored_bytes: int  # compressed size of every distinct blob the tree needs


@dataclass(frozen=True, slots=True)
class ChangeRow:
    path: str
    status: str
    changes: list[str]
    patch: list[tuple[str, str]] | None  # (class, line)
    note: str | None  # why no patch is shown


class Summaries:
    """Counts and stored size of trees by root listing id: a tree never changes, and counting
    one of 75,000 paths reads every listing of it."""

    def __init__(self, keep: int = SUMMARIES):
        self.keep = keep
        self.known: OrderedDict[bytes, TreeSummary] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, store: ChunkStore, root_id: bytes) -> TreeSummary:
        with self.lock:
            found = self.known.get(root_id)
        if found is None:
            found = tree_summary(store, root_id)
            with self.lock:
                self.known[root_id] = found
                while len(self.known) > self.keep:
                    self.known.popitem(last=False)
        return found


def tree_summary(store: ChunkStore, root_id: bytes) -> TreeSummary:
    """What `vml show` counts (tree_counts, and the stored bytes of every distinct blob),
    reading each distinct listing once: counts are kept per listing and multiplied out."""
    load = listing_loader(store)
    top = root_node(load, root_id).tree
    assert top is not None  # decode_listing refuses a directory without a listing
    blobs = {root_id, top}
    own: dict[bytes, tuple[tuple[int, int, int, int], list[bytes]]] = {}
    stack = [top]
    while stack:
        listing_id = stack.pop()
        if listing_id in own:
            continue
        files = links = other = 0
        below = []
        for node in load(listing_id).nodes:
            if node.kind == KIND_DIR and node.tree is not None:
                below.append(node.tree)
            elif node.kind == KIND_FILE:
                files += 1
            elif node.kind == KIND_SYMLINK:
                links += 1
            else:
                other += 1
            blobs.update(node.chunk_ids())
        blobs.update(below)
        own[listing_id] = ((files, len(below), links, other), below)
        stack.extend(below)
    _files, directories, symlinks, others = _multiplied(own, top)
    return TreeSummary(directories, symlinks, others, sum(store.stored_size(blob) for blob in blobs if blob in store))


def _multiplied(own: dict[bytes, tuple[tuple[int, int, int, int], list[bytes]]], top: bytes) -> tuple[int, int, int, int]:
    """The counts below `top`: each listing's own, plus its subdirectories' as often as it names them."""
    counted: dict[bytes, tuple[int, int, int, int]] = {}
    stack = [top]
    while stack:
        listing_id = stack[-1]
        mine, below = own[listing_id]
        waiting = [child for child in below if child not in counted]
        if waiting:
            stack.extend(waiting)
            continue
        sums = list(mine)
        for child in below:
            sums = [a + b for a, b in zip(sums, counted[child])]
        counted[listing_id] = (sums[0], sums[1], sums[2], sums[3])
        stack.pop()
    return counted[top]


# -- access


def namespace_refs(repository: ServerRepository, namespace: str, caller: Caller) -> dict[str, str]:
    """The refs of `namespace` the caller sees; NotFound if they may see nothing there."""
    if not NAME.fullmatch(namespace) or namespace in RESERVED:
        raise NotFound(NOT_FOUND)
    refs = repository.visible_refs(namespace, caller)
    if not refs and not may(caller, namespace, READ):
        raise NotFound(NOT_FOUND)
    return refs


def reachable(repository: ServerRepository, entry_id: str, refs: dict[str, str]) -> bool:
    """Whether `entry_id` is a tip of `refs` or an ancestor of one (a set lookup: as fast for
    an id that exists as for one that does not)."""
    return entry_id in repository.history(refs.values())


def readable_namespaces(server: Server, caller: Caller) -> list[NamespaceRow]:
    """Every namespace in which the caller sees something, or has a role."""
    repository = server.repository
    names = {stored.split("/")[2] for stored in repository.git().ref_names(NAMESPACES)}
    names.update(group for group, _role in caller.groups)
    if caller.user:
        names.add(caller.user)
    if caller.admin:
        names.update(server.accounts.namespaces())
    rows = []
    for name in sorted(names):
        refs = repository.visible_refs(name, caller)
        held = role(caller, name)
        if refs or held:
            rows.append(NamespaceRow(name, held or "public", _count(refs, BRANCH_PREFIX), _count(refs, TAG_PREFIX), _count(refs, PUBLIC_PREFIX)))
    return rows


def _count(refs: dict[str, str], prefix: str) -> int:
    return sum(1 for name in refs if name.startswith(prefix))


# -- refs and entries


def ref_name(ref: str) -> str:
    if ref.startswith(BASE_PREFIX):
        return "base " + ref[len(BASE_PREFIX):]
    return short_name(ref)


def ref_rows(refs: dict[str, str]) -> list[RefRow]:
    order = (BRANCH_PREFIX, TAG_PREFIX, PUBLIC_PREFIX, BASE_PREFIX)
    kinds = {BRANCH_PREFIX: "branch", TAG_PREFIX: "tag", PUBLIC_PREFIX: "public", BASE_PREFIX: "base"}
    rows = []
    for prefix in order:
        rows += [RefRow(ref_name(ref), kinds[prefix], target) for ref, target in sorted(refs.items()) if ref.startswith(prefix)]
    return rows


def labels_of(refs: dict[str, str]) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for row in ref_rows(refs):
        labels.setdefault(row.entry, []).append(("tag: " if row.kind == "tag" else "") + row.name)
    return labels


def tips_of(refs: dict[str, str]) -> list[str]:
    """The entries refs name, each once, in the order of the refs' names (as `vml log --all` starts)."""
    return list(dict.fromkeys(refs[name] for name in sorted(refs)))


def log_row(git: GitDag, entry_id: str, labels: dict[str, list[str]]) -> LogEntry:
    raw = git.commit(entry_id)
    try:
        info: EntryInfo | None = read_entry(git, entry_id)
    except (UnknownEntry, CorruptObject):
        info = None
    return LogEntry(raw.id, raw.parents, raw.message, raw.author, raw.email, raw.time, raw.offset, labels.get(entry_id, []),
                    info.area if info else None, info.files if info else None, info.logical_bytes if info else None,
                    info.added_bytes if info else None)


def log_rows(git: GitDag, refs: dict[str, str], skip: int, limit: int) -> tuple[list[LogEntry], bool]:
    """`limit` entries the refs reach, newest first, after the first `skip`; and whether more follow."""
    labels = labels_of(refs)
    commits = list(itertools.islice(git.walk(tips_of(refs)), skip, skip + limit + 1))
    return [log_row(git, commit, labels) for commit in commits[:limit]], len(commits) > limit


def bundle_ref(refs: dict[str, str], entry_id: str) -> str | None:
    """The ref a bundle of the entry carries, so that `vml import` sets it: a branch at the
    entry first, then a tag, then a public entry."""
    for prefix in (BRANCH_PREFIX + "main", BRANCH_PREFIX, TAG_PREFIX, PUBLIC_PREFIX):
        found = sorted(ref for ref, target in refs.items() if target == entry_id and ref.startswith(prefix))
        if found:
            return found[0]
    return None


# -- paths and files


def url_path(request: Request, fixed: int) -> bytes:
    """The entry path at the end of the URL after `fixed` segments, from the raw request bytes:
    each segment percent-decoded to a name's bytes; '..', '.', an encoded '/' and empty
    segments (but a trailing slash) are refused."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    segments = raw.split(b"/")[1 + fixed:]
    if segments and segments[-1] == b"":
        segments.pop()
    names = [unquote_to_bytes(segment) for segment in segments]
    for name in names:
        if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
            raise BadPath("a path in a URL is a list of names inside the entry: no '..', '.', empty or encoded '/' names")
    return b"/".join(names)


def url_of(path: bytes) -> str:
    return quote(path, safe="/")


def node_at_path(load: Callable[..., Any], root_id: bytes, path: bytes) -> Node | None:
    """The node at `path`, reading only the listings on the way to it, each looked up by name."""
    node = root_node(load, root_id)
    for name in path.split(b"/") if path else ():
        if node.kind != KIND_DIR:
            return None
        item = load(node.tree, raw=True).get(name)
        if item is None:
            return None
        node = node_from_item(item)
    return node


def node_row(node: Node, parent: bytes) -> NodeRow:
    path = parent + b"/" + node.name if parent else node.name
    kind_bits = {KIND_DIR: stat.S_IFDIR, KIND_FILE: stat.S_IFREG, KIND_SYMLINK: stat.S_IFLNK}.get(node.kind, 0)
    owner = f"{node.user or node.uid}:{node.group or node.gid}"
    when = datetime.datetime.fromtimestamp(node.mtime_ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M")
    return NodeRow(quote_path(node.name), url_of(path), KIND_NAMES[node.kind], stat.filemode(kind_bits | node.mode), owner, node.size, when,
                   quote_path(node.target) if node.target is not None else None)


def checked_chunks(store: ChunkStore, node: Node) -> list[bytes]:
    """A file's chunk ids, once their recorded sizes add up to what the node says (as
    read_content checks): a lying node costs no memory and no bytes sent."""
    chunks = node.chunk_ids()
    expected = sum(length for _offset, length in node.extents) if node.extents is not None else node.size
    if sum(store.raw_size(chunk) for chunk in chunks) != expected or not 0 <= expected <= node.size:
        raise CorruptObject(f"damaged manifest: {quote_path(node.name)} does not have the {node.size:,} bytes it says")
    return chunks


def file_pieces(store: ChunkStore, node: Node, chunks: list[bytes]) -> Iterator[bytes]:
    """A regular file's bytes piece by piece, holes of a sparse file as zeros."""
    data = (store.get(chunk) for chunk in chunks)  # each verified against its id
    if node.extents is None:
        yield from data
        return
    pending = b""
    position = 0
    for offset, length in node.extents:
        for start in range(position, offset, STREAM_PIECE):
            yield bytes(min(STREAM_PIECE, offset - start))
        while len(pending) < length:
            pending += next(data)
        yield pending[:length]
        pending, position = pending[length:], offset + length
    for start in range(position, node.size, STREAM_PIECE):
        yield bytes(min(STREAM_PIECE, node.size - start))


def as_text(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def patch_lines(text: str) -> list[tuple[str, str]]:
    lines = []
    for line in text[:PATCH_TEXT].splitlines():
        if line.startswith(("+++", "---")):
            kind = "head"
        elif line.startswith("@@"):
            kind = "hunk"
        else:
            kind = {"+": "add", "-": "del"}.get(line[:1], "ctx")
        lines.append((kind, line))
    if len(text) > PATCH_TEXT:
        lines.append(("note", f"… {len(text) - PATCH_TEXT:,} more characters of this diff not shown"))
    return lines


def change_rows(store: ChunkStore, load: Callable[..., Any], old_root: bytes, new_root: bytes) -> tuple[list[ChangeRow], int]:
    """The first DIFF_CHANGES changes between two trees, unified diffs of the first DIFF_PATCHES
    small files among them (a page stays bounded); and how many changes there are in all."""
    changes = diff_paths(load, old_root, new_root, [b""])
    rows = []
    patches = 0
    for change in changes[:DIFF_CHANGES]:
        files = [n for n in (change.old, change.new) if n is not None and n.kind == KIND_FILE]
        want = bool(files) and change.status != PROPERTIES and patches < DIFF_PATCHES and all(n.size <= PATCH_FILE for n in files)
        entry = diff_entry(change, store, None, want)
        patches += want
        note = None
        if change.status != PROPERTIES and any(n.size > PATCH_FILE for n in files):
            note = f"larger than {PATCH_FILE >> 20} MiB: no text diff here"
        rows.append(_change_row(entry, patch_lines(entry.patch) if entry.patch else None, note))
    return rows, len(changes)


def _change_row(entry: DiffEntry, patch: list[tuple[str, str]] | None, note: str | None) -> ChangeRow:
    path = quote_path(os.fsencode(entry.path)) if entry.path != "." else "."
    return ChangeRow(path, entry.status, entry.changes, patch, note)


def _number(text: str | None, ceiling: int = 10**9) -> int:
    return min(int(text), ceiling) if text is not None and text.isdigit() and len(text) < 12 else 0


# -- the pages


class Pages:
    def __init__(self, server: Server):
        self.server = server
        self.repository = server.repository
        self.templates = Environment(loader=FileSystemLoader(os.path.join(HERE, "templates")), autoescape=select_autoescape(default=True),
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["size"] = size
        self.templates.filters["date"] = _date
        self.templates.filters["counted"] = _counted
        self.csrf_key = secrets.token_bytes(32)  # a restart asks open pages to reload before they post
        self.summaries = Summaries()

    def routes(self) -> list[BaseRoute]:
        page = self.page
        return [
            Route("/", page(self.home)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
            Route("/{namespace}", page(self.namespace)),
            Route("/{namespace}/graph", page(self.graph)),
            Route("/{namespace}/diff", page(self.diff)),
            Route("/{namespace}/e/{entry}", page(self.entry)),
            Route("/{namespace}/e/{entry}/bundle", page(self.bundle)),
            Route("/{namespace}/e/{entry}/tree", page(self.directory)),
            Route("/{namespace}/e/{entry}/tree/{path:path}", page(self.directory)),
            Route("/{namespace}/e/{entry}/file/{path:path}", page(self.file)),
            Route("/{namespace}/e/{entry}/raw/{path:path}", page(self.raw)),
        ]

    # -- the frame of every page

    def page(self, view: Callable[[Request, Caller], Response]) -> Callable[[Request], Any]:
        """An endpoint: the caller from the session cookie (or the login page), then the view
        in the threadpool; what the caller may not see is the one 404 page."""

        async def endpoint(request: Request) -> Response:
            try:
                caller = await run_in_threadpool(self.server.caller, request, cookie=True)
            except HttpError:  # the cookie's token was revoked or has expired
                response = self.to_login(request)
                response.delete_cookie(SESSION, path="/")
                return response
            if caller.anonymous and not self.repository.anonymous_public:
                return self.to_login(request)
            await run_in_threadpool(self.server.repository.sync)  # refs another server process moved
            return await run_in_threadpool(self.shown, view, request, caller)

        return endpoint

    def shown(self, view: Callable[[Request, Caller], Response], request: Request, caller: Caller) -> Response:
        try:
            return view(request, caller)
        except (NotFound, UnknownEntry):
            return self.render(request, caller, "error.html", status=404, title="Not found", message=NOT_FOUND)
        except BadPath as error:
            return self.render(request, caller, "error.html", status=400, title="Bad request", message=str(error))
        except VmlError as error:  # damage found while reading something the caller may read
            return self.render(request, caller, "error.html", status=500, title="Error", message=str(error))

    def render(self, request: Request, caller: Caller, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(caller=caller, csrf=self.session_csrf(request),
                                                            anonymous_public=self.repository.anonymous_public, **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def to_login(self, request: Request) -> RedirectResponse:
        """The login page, which comes back here after: the path as it came (a name's bytes stay percent-encoded)."""
        raw = request.scope.get("raw_path") or request.url.path.encode()
        target = quote(raw, safe="/%") + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?next=" + quote(target, safe="/"), status_code=303)

    def session_csrf(self, request: Request) -> str | None:
        """The logout form's token: bound to the session, unknowable without its cookie."""
        session = request.cookies.get(SESSION)
        return hmac.new(self.csrf_key, session.encode(), hashlib.sha256).hexdigest() if session else None

    @contextlib.contextmanager
    def reading(self) -> Iterator[ChunkStore]:
        """The store as it is now, under the shared lock that keeps gc away."""
        with self.repository.repo.shared_lock():
            store = self.repository.open_store()
            try:
                yield store
            finally:
                store.close()

    def place(self, request: Request, caller: Caller) -> tuple[str, dict[str, str], str]:
        """The namespace, the refs the caller sees there, and the entry of the URL, which
        those refs must reach."""
        namespace = request.path_params["namespace"]
        refs = namespace_refs(self.repository, namespace, caller)
        entry_id = request.path_params["entry"]
        if not ENTRY_ID.fullmatch(entry_id) or not reachable(self.repository, entry_id, refs):
            raise NotFound(NOT_FOUND)
        return namespace, refs, entry_id

    # -- login

    async def login_form(self, request: Request) -> Response:
        return self.login_page(request, _local(request.query_params.get("next")), None, 200)

    def login_page(self, request: Request, target: str, problem: str | None, status: int) -> Response:
        nonce = request.cookies.get(LOGIN_NONCE, "")
        if not LOGIN_NONCE_FORM.fullmatch(nonce):  # else the browser's own: a second tab (or a favicon's detour) keeps the first form valid
            nonce = secrets.token_urlsafe(24)
        response = self.render(request, ANONYMOUS, "login.html", status=status, title="Log in", nonce=nonce, target=target, problem=problem)
        response.set_cookie(LOGIN_NONCE, nonce, max_age=3600, path="/login", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def login(self, request: Request) -> Response:
        form = await _small_form(request)
        target = _local(form.get("next") if form else None)
        if form is None or not _same_origin(request) or not _equal(form.get("csrf"), request.cookies.get(LOGIN_NONCE)):
            return self.login_page(request, target, "The login form had expired or came from another site: try again.", 403)
        token = (form.get("token") or "").strip()
        caller = await run_in_threadpool(self.server.accounts.authenticate, token)
        if caller is None:
            return self.login_page(request, target, "That token is not valid (unknown, expired or revoked).", 401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION, token, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
        response.delete_cookie(LOGIN_NONCE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        form = await _small_form(request)
        if request.cookies.get(SESSION) and (form is None or not _same_origin(request) or not _equal(form.get("csrf"), self.session_csrf(request))):
            return self.render(request, ANONYMOUS, "error.html", status=403, title="Forbidden",
                               message="That logout did not come from a page of this server: log out from its pages.")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    # -- namespaces and entries

    def home(self, request: Request, caller: Caller) -> Response:
        return self.render(request, caller, "home.html", title="Namespaces", namespaces=readable_namespaces(self.server, caller))

    def namespace(self, request: Request, caller: Caller) -> Response:
        namespace = request.path_params["namespace"]
        refs = namespace_refs(self.repository, namespace, caller)
        skip = _number(request.query_params.get("skip"))
        entries, more = log_rows(self.repository.git(), refs, skip, PAGE_ENTRIES)
        return self.render(request, caller, "namespace.html", title=namespace, namespace=namespace, refs=ref_rows(refs), entries=entries,
                           skip=skip, more=more, page_size=PAGE_ENTRIES, access=role(caller, namespace) or "public")

    def graph(self, request: Request, caller: Caller) -> Response:
        namespace = request.path_params["namespace"]
        refs = namespace_refs(self.repository, namespace, caller)
        entries, more = log_rows(self.repository.git(), refs, 0, GRAPH_ENTRIES)
        lines = list(zip(entries, graph_prefixes(entries)))
        return self.render(request, caller, "graph.html", title=f"{namespace}: graph", namespace=namespace, lines=lines, more=more,
                           limit=GRAPH_ENTRIES)

    def entry(self, request: Request, caller: Caller) -> Response:
        namespace, refs, entry_id = self.place(request, caller)
        git = self.repository.git()
        info = read_entry(git, entry_id)
        with self.reading() as store:
            summary = self.summaries.get(store, entry_root(git, entry_id))
        carried = bundle_ref(refs, entry_id)
        return self.render(request, caller, "entry.html", title=f"{namespace}: {entry_id[:12]}", namespace=namespace,
                           entry=log_row(git, entry_id, labels_of(refs)), info=info, summary=summary, scrub=info.scrub, shown=SCRUB_SHOWN,
                           import_as=short_name(carried) if carried else None)

    # -- files

    def directory(self, request: Request, caller: Caller) -> Response:
        namespace, _refs, entry_id = self.place(request, caller)
        path = url_path(request, 4)
        page = _number(request.query_params.get("page"))
        with self.reading() as store:
            load: Callable[..., Any] = listing_loader(store)
            node = node_at_path(load, entry_root(self.repository.git(), entry_id), path)
            if node is None:
                raise NotFound(NOT_FOUND)
            if node.kind != KIND_DIR:
                return RedirectResponse(f"/{namespace}/e/{entry_id}/file/{url_of(path)}", status_code=303)
            items: dict[bytes, list] = load(node.tree, raw=True)  # one listing; only the names of this page become nodes
            start = page * DIRECTORY_PAGE
            rows = [node_row(node_from_item(items[name]), path) for name in itertools.islice(items, start, start + DIRECTORY_PAGE)]
        return self.render(request, caller, "directory.html", title=f"{namespace}: {quote_path(path) or '/'}", namespace=namespace,
                           entry_id=entry_id, crumbs=_crumbs(path), path=url_of(path), rows=rows, total=len(items), page=page,
                           pages=max(1, -(-len(items) // DIRECTORY_PAGE)), start=start)

    def file(self, request: Request, caller: Caller) -> Response:
        namespace, _refs, entry_id = self.place(request, caller)
        path = url_path(request, 4)
        with self.reading() as store:
            node = node_at_path(listing_loader(store), entry_root(self.repository.git(), entry_id), path)
            if node is None:
                raise NotFound(NOT_FOUND)
            if node.kind == KIND_DIR:
                return RedirectResponse(f"/{namespace}/e/{entry_id}/tree/{url_of(path)}", status_code=303)
            text = None
            if node.kind == KIND_FILE and node.size <= SHOWN_FILE:
                text = as_text(read_content(store, node))
        parent = path.rpartition(b"/")[0]
        return self.render(request, caller, "file.html", title=f"{namespace}: {quote_path(path)}", namespace=namespace, entry_id=entry_id,
                           crumbs=_crumbs(path), path=url_of(path), parent=url_of(parent), node=node_row(node, parent), text=text,
                           shown_limit=SHOWN_FILE)

    def raw(self, request: Request, caller: Caller) -> Response:
        _namespace, _refs, entry_id = self.place(request, caller)
        path = url_path(request, 4)
        with self.reading() as store:
            node = node_at_path(listing_loader(store), entry_root(self.repository.git(), entry_id), path)
            if node is None or node.kind != KIND_FILE:
                raise NotFound(NOT_FOUND)
            checked_chunks(store, node)
        name = node.name.decode("utf-8", "replace")
        headers = {**HEADERS, "Content-Length": str(node.size),
                   "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"}
        return StreamingResponse(self.streamed(node), media_type="application/octet-stream", headers=headers)

    def streamed(self, node: Node) -> Iterator[bytes]:
        """The file's bytes, read under the shared lock while they are sent (Starlette runs this in its threadpool)."""
        with self.reading() as store:
            yield from file_pieces(store, node, checked_chunks(store, node))

    # -- comparing and taking away

    def diff(self, request: Request, caller: Caller) -> Response:
        namespace = request.path_params["namespace"]
        refs = namespace_refs(self.repository, namespace, caller)
        git = self.repository.git()
        old, new = request.query_params.get("old", ""), request.query_params.get("new", "")
        for entry_id in (old, new):
            if not ENTRY_ID.fullmatch(entry_id) or not reachable(self.repository, entry_id, refs):
                raise NotFound(NOT_FOUND)
        with self.reading() as store:
            rows, total = change_rows(store, listing_loader(store), entry_root(git, old), entry_root(git, new))
        environment = [_change_row(entry, None, None) for entry in env_diff(entry_files(git, old), entry_files(git, new))]
        labels = labels_of(refs)
        return self.render(request, caller, "diff.html", title=f"{namespace}: diff", namespace=namespace, old=log_row(git, old, labels),
                           new=log_row(git, new, labels), rows=rows, total=total, environment=environment, patches=DIFF_PATCHES,
                           patch_file=PATCH_FILE)

    def bundle(self, request: Request, caller: Caller) -> Response:
        namespace, refs, entry_id = self.place(request, caller)
        git = self.repository.git()
        info = read_entry(git, entry_id)
        bases = {}
        if info.base is not None:  # a full bundle needs nothing: its base goes too, if the caller may read it
            base_ref = BaseName(info.base.name, info.base.version).ref
            if base_ref in refs:
                bases[base_ref] = refs[base_ref]
        descriptor, path = tempfile.mkstemp(prefix="page-", suffix=".bundle", dir=self.repository.transfers_dir)
        os.close(descriptor)
        try:
            with self.reading() as store:
                write_bundle(git, store, path, entry=entry_id, ref=bundle_ref(refs, entry_id), kind=FULL, requires=[], tmp_dir=store.tmp_dir,
                             bases=bases)
        except BaseException:
            os.unlink(path)
            raise
        return FileResponse(path, media_type="application/x-vml-bundle", filename=f"{namespace}-{entry_id[:12]}.vmlb", headers=HEADERS,
                            background=BackgroundTask(os.unlink, path))


def page_routes(server: Server) -> list[BaseRoute]:
    return Pages(server).routes()


# -- small helpers of the HTTP side


async def _small_form(request: Request) -> dict[str, str] | None:
    """A posted form's text fields; None if it is too large or not a form."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM:
        return None
    try:
        form = await request.form()
    except (HTTPException, MultiPartException, ValueError):  # a malformed body
        return None
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _same_origin(request: Request) -> bool:
    """A post from this server's own pages: its Origin (or Referer) names this server. A
    browser that sends neither still needs the form's token."""
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return True
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def _equal(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def _local(target: str | None) -> str:
    """Where to go after login: a path of this server, never another site's URL."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or any(c in target for c in "\r\n\\"):
        return "/"
    return target


def _crumbs(path: bytes) -> list[tuple[str, str]]:
    """(name, url path) of each directory on the way to `path`, its last name included."""
    names = path.split(b"/") if path else []
    return [(quote_path(name), url_of(b"/".join(names[: index + 1]))) for index, name in enumerate(names)]


def _counted(number: int, one: str, many: str | None = None) -> str:
    return f"{number:,} {one if number == 1 else many or one + 's'}"


def _date(entry: LogEntry) -> str:
    zone = datetime.timezone(datetime.timedelta(minutes=entry.offset))
    return datetime.datetime.fromtimestamp(entry.time, zone).strftime("%Y-%m-%d %H:%M %z")
