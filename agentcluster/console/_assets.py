"""The console's static files, served at ``/ui`` with revalidation, an SPA fallback and a strict
Content-Security-Policy.

The files are read once, when the router is built (a few tens of KiB), so a Serve replica serves
them from memory wherever it runs. Deep links (``/ui/sessions/<id>``) get ``index.html``, whose
``<base href>`` is set per request to where the console is mounted, so the same files work
behind a route prefix.
"""

# No ``from __future__ import annotations``: the routes are nested functions that Serve pickles
# by value, and FastAPI reads their annotations again in the replica, where only real objects
# (not names to look up in the module) survive the trip.

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

from fastapi import APIRouter, Request, Response

__all__ = ["CONTENT_SECURITY_POLICY", "ConsoleAssets", "ui_router"]

UI_PATH = "/ui"
INDEX = "index.html"
BASE_PLACEHOLDER = "%CONSOLE_BASE%"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        # Model and tool output is untrusted: with no Trusted Types policy allowed, any
        # innerHTML-like sink throws, so text can only reach the page as text.
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CACHE_CONTROL = "no-cache"
"""Revalidate every time (a 304 costs a round trip and no bytes): the files have no content hash
in their names, and a stale module after an upgrade would be worse than the round trip."""

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@dataclass(frozen=True)
class Asset:
    """One file: its bytes, media type and entity tag."""

    body: bytes
    media_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> "Asset":
        suffix = PurePosixPath(name).suffix
        media_type = _MEDIA_TYPES.get(suffix) or (
            mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        return cls(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            files |= _walk(entry, f"{name}/")
        elif not entry.name.startswith("."):
            files[name] = entry.read_bytes()
    return files


class ConsoleAssets:
    """The console's files by path relative to ``static/`` (``index.html``, ``js/app.js``, ...)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        if INDEX not in files:
            raise ValueError(f"the console's files have no {INDEX}")
        self._index = files[INDEX].decode()
        self._assets = {name: Asset.of(name, body) for name, body in files.items()}

    @classmethod
    def packaged(cls) -> "ConsoleAssets":
        """The files shipped in ``agentcluster/console/static``."""
        return cls(_walk(resources.files("agentcluster.console") / "static"))

    def asset(self, path: str) -> Asset | None:
        """The file at ``path``, or None."""
        return self._assets.get(path)

    def index(self, base: str) -> "Asset":
        """``index.html`` with its ``<base href>`` set to ``base``."""
        return Asset.of(INDEX, self._index.replace(BASE_PLACEHOLDER, base).encode())


def _looks_like_file(path: str) -> bool:
    return bool(PurePosixPath(path).suffix)


def _send(request: Request, asset: Asset, status: int = 200) -> Response:
    headers = SECURITY_HEADERS | {"Cache-Control": CACHE_CONTROL, "ETag": asset.etag}
    if status == 200 and asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, status_code=status, media_type=asset.media_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(asset.body))
    return response


def _not_found(path: str) -> Response:
    return Response(
        f"no such console file: {path}\n",
        status_code=404,
        media_type="text/plain; charset=utf-8",
        headers=SECURITY_HEADERS | {"Cache-Control": "no-store"},
    )


def ui_router(assets: ConsoleAssets | None = None) -> APIRouter:
    """Routes serving the console at ``/ui`` (``/ui`` itself redirects to ``/ui/``)."""
    files = assets or ConsoleAssets.packaged()
    router = APIRouter(include_in_schema=False)

    @router.api_route(UI_PATH, methods=["GET", "HEAD"])
    async def ui_root(request: Request) -> Response:
        location = f"{request.scope.get('root_path', '')}{UI_PATH}/"
        return Response(status_code=308, headers=SECURITY_HEADERS | {"Location": location})

    @router.api_route(UI_PATH + "/{path:path}", methods=["GET", "HEAD"])
    async def ui_file(request: Request, path: str) -> Response:
        found = files.asset(path) if path and path != INDEX else None
        if found is not None:
            return _send(request, found)
        if path and _looks_like_file(path) and path != INDEX:
            return _not_found(path)
        # The SPA fallback: the page routes ``path`` itself.
        base = f"{request.scope.get('root_path', '')}{UI_PATH}/"
        return _send(request, files.index(base))

    return router
