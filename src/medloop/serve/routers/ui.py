"""The browser UI: its page, its ES modules, and its own endpoints (status, readers' agreement, the pseudo-labels
flagged for review, an item's arrays, lease, release)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from medloop.serve.datastore import RequestError
from medloop.serve.served_run import ServedRun, served

__all__ = ["STATIC", "router"]

router = APIRouter(tags=["ui"])

STATIC = {"main.js": "text/javascript", "api.js": "text/javascript", "editor.js": "text/javascript",
          "panels.js": "text/javascript", "style.css": "text/css"}


@router.get("/api/status")
def status(client_id: str | None = None, run: ServedRun = Depends(served)) -> dict:
    return run.status(client_id)


@router.get("/api/agreement")
def agreement(run: ServedRun = Depends(served)) -> dict:
    """With several reads per image: agreement per annotator and pair, the images with the most disagreement."""
    return run.agreement()


@router.get("/api/review")
def review(run: ServedRun = Depends(served)) -> dict:
    """The pseudo-labels the method's quality control flags, lowest predicted Dice first (``ServedRun.review``)."""
    return run.review()


@router.get("/api/item")
def item(image: str, run: ServedRun = Depends(served)) -> dict:
    return run.item(image)


@router.post("/api/lease")
def lease(image: str, client_id: str | None = None, run: ServedRun = Depends(served)) -> dict:
    """Open a given image of the queue (409 while another annotator holds it)."""
    return run.lease(image, client_id)


@router.post("/api/release")
def release(image: str, client_id: str | None = None, run: ServedRun = Depends(served)) -> dict:
    """Skip: hand the image back; it comes to this annotator again after the others."""
    run.release(image, client_id)
    return {"released": image}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request, run: ServedRun = Depends(served)) -> Response:
    if "token" in request.query_params:  # as Jupyter: trade the URL's token for a cookie, drop it from the URL
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(run.cookie, run.token, httponly=True, samesite="strict", path="/")
        return response
    html = files("medloop.serve").joinpath("static", "index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                       "default-src 'self'; img-src 'self' data: blob:; style-src 'self'"})


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise RequestError(f"no static file '{name[:40]}'", 404)
    body = files("medloop.serve").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-store"})
