"""The web page at ``/``: one self-contained HTML file (inline CSS and JavaScript, no CDN, no
external fonts), because an edge server is often offline.

The page posts an image to ``/v1/detect`` (with the ``X-API-Key`` header when the user gives a
key), draws the boxes on a canvas, and filters them by confidence and class in the browser. When
``GET /v1/models`` lists several model versions (``--repository``), a picker of "name · version"
entries (the server's default model first selected; ``/?model=NAME&version=V`` selects another)
sends the image to ``/v1/models/NAME/versions/V/detect`` instead, and the model line and class
list follow the chosen model; with one model the picker is hidden.

It is served without an API key: it holds no data, and every request it makes to ``/v1`` carries
the key the user typed. A Content-Security-Policy header lets it load nothing from elsewhere.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = "index.html"

# inline script and style only; images from the page's own blob: URLs; requests to this server
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

router = APIRouter()


@cache
def page_html() -> str:
    """The page's text, read once from the package data."""
    return files(__name__).joinpath(PAGE).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(
        page_html(),
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )
