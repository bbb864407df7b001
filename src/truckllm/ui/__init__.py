"""The dashboard's static files (``static/``, package data in the wheel): plain HTML, CSS and
JavaScript, and uPlot (MIT, vendored unchanged in ``static/vendor``) for the charts. The page
reads everything from the admin API with the admin key as its bearer, so serving it is only
handing out these files.

:class:`Assets` loads them once, with their content type, a strong ETag and a gzip copy.
``index.html`` names the other files as ``name?v=@name@``; the ``@name@`` becomes the file's
hash, so every file but the page itself can be cached for good.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
INDEX = "index.html"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None  # None: not worth it
    content_type: str
    etag: str
    immutable: bool  # named with its hash by the page: cache for good


class Assets:
    """The files under ``static/`` by relative path (``vendor/uPlot.min.css``)."""

    def __init__(self) -> None:
        root = resources.files(__name__) / "static"
        raw: dict[str, bytes] = {}
        stack = [("", root)]
        while stack:
            prefix, folder = stack.pop()
            for entry in folder.iterdir():
                if entry.is_dir():
                    stack.append((f"{prefix}{entry.name}/", entry))
                elif entry.is_file() and _type_of(entry.name) is not None:
                    raw[prefix + entry.name] = entry.read_bytes()
        page = raw[INDEX]
        for name, body in raw.items():
            page = page.replace(f"@{name}@".encode(), _hash(body)[:12].encode())
        raw[INDEX] = page
        self.files = {
            name: _asset(body, str(_type_of(name)), name != INDEX) for name, body in raw.items()
        }

    def get(self, name: str) -> Asset | None:
        return self.files.get(name)


def _type_of(name: str) -> str | None:
    dot = name.rfind(".")
    return _TYPES.get(name[dot:]) if dot >= 0 else None


def _hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _asset(body: bytes, content_type: str, immutable: bool) -> Asset:
    packed = gzip.compress(body, 9, mtime=0) if len(body) > 1024 else None
    if packed is not None and len(packed) > len(body) * 0.9:
        packed = None
    return Asset(body, packed, content_type, f'"{_hash(body)[:20]}"', immutable)
