"""The HTTP interface of `vml serve`: a Starlette (ASGI) app, its one home.

API, under /api/v1 (JSON; a token as `Authorization: Bearer vml_...`, never in a URL):

    GET    /api/v1/whoami                         who the token stands for
    GET    /api/v1/ns/NS/refs                     the refs of NS the caller may read, and its default branch
    POST   /api/v1/ns/NS/fetch                    {"want": [...], "have": [...]} -> a transfer to download
    GET    /api/v1/transfers/ID                   the transfer (a bundle); Range: resumes a dropped download
    DELETE /api/v1/transfers/ID                   the client has it all (else it goes after an hour)
    POST   /api/v1/ns/NS/uploads                  start a push -> an upload id
    HEAD   /api/v1/uploads/ID                     Upload-Offset: how much arrived (to resume)
    PATCH  /api/v1/uploads/ID                     append bytes at Upload-Offset
    POST   /api/v1/uploads/ID/apply               {"updates": [{"ref", "old", "new", "force"}]} -> each ref's fate

Every error is JSON {"error": "one line"} with its status: 400 a malformed request, 401 a
token that is not valid (whatever the reason), 403 not allowed, 404 nothing the caller may
see, 409 the refs moved, 413 too large. A namespace the caller may not read looks like an
empty one, whether it exists or not. Pages (web.py) are served by the same app.
"""

from __future__ import annotations

import asyncio
import json
import os

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vml import __version__
from vml.errors import ConcurrentUpdate, CorruptObject, UsageError, VmlError
from vml.server.accounts import ANONYMOUS, NAME, RESERVED, Accounts, Caller, mode_of
from vml.server.exchange import Forbidden, Moved, NotFound, ServerRepository

MAX_JSON = 1024 * 1024
MAX_PIECE = 64 * 1024 * 1024  # one PATCH: the client sends pieces, each resumable


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


STATUS_OF = ((Forbidden, 403), (NotFound, 404), (Moved, 409), (ConcurrentUpdate, 409), (CorruptObject, 400), (UsageError, 400))


def _status(error: VmlError) -> int:
    return next((status for kind, status in STATUS_OF if isinstance(error, kind)), 500)


class Server:
    """What every request needs: the repository, the accounts, the settings."""

    def __init__(self, path: str, *, anonymous_public: bool = False, max_upload: int = 1 << 40, store: str | None = None,
                 accounts: str | None = None):
        self.repository = ServerRepository(path, anonymous_public=anonymous_public, store=store)
        self.accounts = Accounts(self.repository.path, accounts)
        self.max_upload = max_upload

    def caller(self, request: Request, *, cookie: bool = False) -> Caller:
        """The API takes the Authorization header only; pages (`cookie`) also the session
        cookie set at login, which a form on another site cannot use to push."""
        header = request.headers.get("authorization")
        if header is None:
            session = request.cookies.get("vml_session") if cookie else None
            if session is None:
                return ANONYMOUS
            header = "Bearer " + session
        scheme, _, token = header.partition(" ")
        caller = self.accounts.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if caller is None:
            raise HttpError(401, f"the token is not valid (unknown, expired or revoked): log in again with "
                                 f"'vml login {str(request.base_url).rstrip('/')}'",
                            {"WWW-Authenticate": 'Bearer realm="vml"'})
        return caller


def _namespace(request: Request) -> str:
    """A namespace is a user's or a group's name: never '..' or anything else a ref path could climb with."""
    namespace = request.path_params["namespace"]
    if not NAME.fullmatch(namespace) or namespace in RESERVED:
        raise HttpError(404, "no such namespace")
    return namespace


async def _json_body(request: Request) -> dict:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_JSON:
            raise HttpError(413, f"the request body is larger than {MAX_JSON} bytes")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # [[[[... a megabyte deep is no JSON this server reads
        raise HttpError(400, "the request body is not JSON") from None
    if not isinstance(value, dict):
        raise HttpError(400, "the request body is not a JSON object")
    return value


def api(server: Server):
    """Wrap an endpoint: the caller first, errors as JSON with their status."""

    def wrap(endpoint):
        async def handle(request: Request) -> Response:
            try:
                caller = await run_in_threadpool(server.caller, request)
                return await endpoint(request, caller)
            except HttpError as error:
                return error_response(error.status, str(error), error.headers)
            except VmlError as error:
                return error_response(_status(error), str(error))
            except ClientDisconnect:  # a dropped upload keeps what arrived, to resume; no one is left to answer
                return Response(status_code=400)

        return handle

    return wrap


def build_app(server: Server) -> Starlette:
    handler = api(server)
    repository = server.repository
    appending: dict[str, asyncio.Lock] = {}

    @handler
    async def whoami(request: Request, caller: Caller) -> Response:
        return JSONResponse({"user": caller.user, "admin": caller.admin, "mode": mode_of(caller.limit) if caller.user else None,
                             "groups": dict(caller.groups), "server": __version__})

    @handler
    async def refs(request: Request, caller: Caller) -> Response:
        namespace = _namespace(request)
        await run_in_threadpool(repository.sync)
        visible = await run_in_threadpool(repository.visible_refs, namespace, caller)
        head = "main" if "refs/heads/main" in visible else None
        return JSONResponse({"refs": visible, "head": head})

    @handler
    async def fetch(request: Request, caller: Caller) -> Response:
        body = await _json_body(request)
        want, have = body.get("want"), body.get("have", [])
        if not (isinstance(want, list) and isinstance(have, list) and all(isinstance(c, str) for c in want + have)):
            raise HttpError(400, "want and have are lists of entry ids")
        await run_in_threadpool(repository.sync)
        transfer = await run_in_threadpool(repository.make_transfer, _namespace(request), caller, want, have)
        return JSONResponse({"transfer": transfer.id, "size": transfer.size, "commits": transfer.commits})

    @handler
    async def download(request: Request, caller: Caller) -> Response:
        transfer = await run_in_threadpool(repository.transfer, request.path_params["transfer"], caller)
        return FileResponse(transfer.path, media_type="application/x-vml-bundle")

    @handler
    async def forget_transfer(request: Request, caller: Caller) -> Response:
        transfer = await run_in_threadpool(repository.transfer, request.path_params["transfer"], caller)
        await run_in_threadpool(repository.forget_transfer, transfer)
        return Response(status_code=204)

    @handler
    async def start_upload(request: Request, caller: Caller) -> Response:
        upload = await run_in_threadpool(repository.start_upload, _namespace(request), caller)
        return JSONResponse({"upload": upload.id}, status_code=201)

    @handler
    async def upload_offset(request: Request, caller: Caller) -> Response:
        upload = await run_in_threadpool(repository.upload, request.path_params["upload"], caller)
        return Response(status_code=204, headers={"Upload-Offset": str(os.path.getsize(upload.path))})

    @handler
    async def append(request: Request, caller: Caller) -> Response:
        upload = await run_in_threadpool(repository.upload, request.path_params["upload"], caller)
        try:
            offset = int(request.headers["upload-offset"])
        except (KeyError, ValueError):
            raise HttpError(400, "an Upload-Offset header (a number) is needed") from None
        # One writer per upload: a request cut off may still be writing when its retry comes.
        async with appending.setdefault(upload.id, asyncio.Lock()):
            size = os.path.getsize(upload.path)
            if offset != size:
                raise HttpError(409, f"the upload holds {size} bytes, not {offset}: resume from there", {"Upload-Offset": str(size)})
            written = 0
            fd = os.open(upload.path, os.O_WRONLY | os.O_APPEND)
            try:
                async for piece in request.stream():
                    written += len(piece)
                    if written > MAX_PIECE or size + written > server.max_upload:
                        raise HttpError(413, f"a piece may be at most {MAX_PIECE} bytes and a push at most {server.max_upload}")
                    os.write(fd, piece)
            except ClientDisconnect:
                return Response(status_code=400)  # what arrived stays: the client resumes after it
            finally:
                os.close(fd)
                repository.arrived(upload, size + written)
        return Response(status_code=204, headers={"Upload-Offset": str(size + written)})

    @handler
    async def apply(request: Request, caller: Caller) -> Response:
        upload = await run_in_threadpool(repository.upload, request.path_params["upload"], caller)
        body = await _json_body(request)
        updates = body.get("updates")
        if not isinstance(updates, list):
            raise HttpError(400, "updates is a list")
        appending.pop(upload.id, None)
        await run_in_threadpool(repository.sync)
        results = await run_in_threadpool(repository.apply, upload, caller, updates)
        return JSONResponse({"refs": results})

    routes = [
        Route("/api/v1/whoami", whoami),
        Route("/api/v1/ns/{namespace}/refs", refs),
        Route("/api/v1/ns/{namespace}/fetch", fetch, methods=["POST"]),
        Route("/api/v1/transfers/{transfer}", download),
        Route("/api/v1/transfers/{transfer}", forget_transfer, methods=["DELETE"]),
        Route("/api/v1/ns/{namespace}/uploads", start_upload, methods=["POST"]),
        Route("/api/v1/uploads/{upload}", upload_offset, methods=["HEAD"]),
        Route("/api/v1/uploads/{upload}", append, methods=["PATCH"]),
        Route("/api/v1/uploads/{upload}/apply", apply, methods=["POST"]),
    ]
    from vml.server.web import page_routes  # the pages: the same app, the same access rules

    return Starlette(routes=routes + page_routes(server), exception_handlers={404: _not_found, 405: _not_allowed})


def _wants_page(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


async def _not_found(request: Request, exc: Exception) -> Response:
    if _wants_page(request):  # a browser: a page, not JSON
        return HTMLResponse("<!doctype html><title>Not found</title><h1>Not found</h1><p><a href=\"/\">vml</a></p>", status_code=404)
    return error_response(404, "no such page or API route")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    if _wants_page(request):
        return HTMLResponse("<!doctype html><title>Not allowed</title><h1>Not allowed</h1>", status_code=405)
    return error_response(405, f"{request.method} is not allowed here")
