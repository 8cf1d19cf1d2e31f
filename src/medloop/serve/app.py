"""The annotation server's web app: a MONAI Label-compatible REST subset, the UI's own endpoints, the UI itself.

Every endpoint but ``GET /health/`` needs the run's token: an ``Authorization: Bearer T`` header, a ``?token=T``
query parameter, or the cookie that ``GET /?token=T`` sets for the browser (HttpOnly, SameSite=Strict, named
after the run, so a browser never carries one run's access to another run's server). Ids are looked up in the
datastore's index, never joined into paths; uploads are checked (size, PNG, single channel, the image's shape,
the run's label values) and refused with a 4xx naming the problem.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import secrets
from importlib.resources import files
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Body, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from medloop.serve.datastore import RequestError, png_bytes
from medloop.serve.runner import Runner

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # a request body larger than this is refused (413) while it streams in
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_LABEL_MODES = {"L", "P", "1", "I", "I;16", "I;16B", "I;16L"}  # single-channel modes that hold label values


def clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become ``null`` (browsers' JSON.parse refuses them), numpy becomes Python."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _b64(array: np.ndarray | None) -> str | None:
    return None if array is None else base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode()


class _Guard:
    """ASGI middleware: a request body over ``limit`` bytes is refused with 413, before or while it streams in;
    every response says ``nosniff`` and ``no-store``."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]
                message["headers"] = list(message.get("headers", [])) + [(k, v) for k, v in extra if k not in names]
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        too_large = (f"the request body is larger than {self.limit} bytes; a label map is a PNG of the image's size, "
                     "far smaller")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse({"detail": too_large}, 413)(scope, receive, send_with_headers)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, too_large)
            return message

        return await self.app(scope, limited, send_with_headers)


def read_label(data: bytes, shape: tuple[int, int], labels: dict[int, str], sample_id: str) -> np.ndarray:
    """Decode and check an uploaded label map: a single-channel PNG of the image's shape with the run's label
    values; raises ``RequestError`` naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("the 'label' file is empty; send the label map as a PNG", 400)
    if not data.startswith(_PNG_MAGIC):
        raise RequestError("the 'label' file is not a PNG; send the label map as a single-channel PNG whose pixel "
                           "values are the label values", 415)
    try:
        with Image.open(io.BytesIO(data)) as im:
            height, width = shape
            if im.size != (width, height):
                raise RequestError(f"the label is {im.width}x{im.height} but image '{sample_id}' is {width}x{height}; "
                                   "send a label map of the image's size", 422)
            if im.mode not in _LABEL_MODES:
                raise RequestError(f"the label PNG has mode {im.mode} ({len(im.getbands())} channels); send a "
                                   "single-channel (gray or palette) PNG whose pixel values are the label values", 422)
            im.load()
            mask = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RequestError(f"the label PNG cannot be decoded ({exc}); send an intact PNG", 422) from None
    mask = mask.astype(np.int64)
    bad = sorted(set(np.unique(mask).tolist()) - set(labels))
    if bad:
        allowed = ", ".join(f"{v}={n}" for v, n in sorted(labels.items()))
        raise RequestError(f"label values {bad[:8]} are not labels of this run ({allowed}); paint only those values",
                           422)
    return mask.astype(np.uint8)


def _client(value: Any) -> str:
    client = "anonymous" if value in (None, "") else value
    if not isinstance(client, str) or len(client) > 64 or not client.isprintable():
        raise RequestError("the 'client_id' must be a printable string of at most 64 characters", 400)
    return client


def _multipart(params: dict, image: bytes, filename: str) -> Response:
    """MONAI Label's infer answer: a multipart form with the ``params`` JSON and the label ``image``."""
    boundary = secrets.token_hex(16)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\nContent-Type: application/json\r\n\r\n'
             .encode() + json.dumps(clean(params)).encode() + b"\r\n",
             f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n", f"--{boundary}--\r\n".encode()]
    return Response(b"".join(parts), media_type=f"multipart/form-data; boundary={boundary}")


def create_app(runner: Runner, token: str, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The app serving ``runner``'s datastore and loop to holders of ``token``."""
    from medloop import __version__

    plan, store, oracle = runner.plan, runner.datastore, runner.oracle
    cookie = f"medloop-{runner.run_id[:16]}"
    secret = token.encode()
    strategy_names = {plan.spec["label"], plan.spec["name"]}
    needs_class = bool(plan.class_names)

    def authorized(request: Request) -> None:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif "token" in request.query_params:
            given = request.query_params["token"]
        else:
            given = request.cookies.get(cookie, "")
        if not given or not secrets.compare_digest(given.encode(), secret):
            raise HTTPException(401, "a valid token is required: open the URL `medloop serve` printed, or send "
                                     "'Authorization: Bearer TOKEN' or '?token=TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="medloop annotation server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(_Guard, limit=max_upload_bytes)
    api = APIRouter(dependencies=[Depends(authorized)])

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError):
        return JSONResponse({"detail": str(exc)}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{' '.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                             for e in exc.errors())
        return JSONResponse({"detail": f"bad request: {problems}"}, 422)

    @app.get("/health/")
    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        """Liveness, without the token (nothing about the run)."""
        return {"status": "ok"}

    # ------------------------------------------------------------------------------------- MONAI Label subset

    @api.get("/info/")
    def info() -> dict:
        return clean({
            "name": runner.config.name, "description": f"medloop {runner.config.method}: {plan.track}",
            "version": __version__,
            "labels": {name: value for value, name in plan.mask_labels.items() if value != 0},
            "models": {runner.model_name: {"type": "segmentation", "labels": plan.mask_labels, "round": runner.model_round,
                                           "classes": plan.class_names, "dimension": 2}},
            "trainers": {}, "strategies": {plan.spec["label"]: {"description": f"medloop strategy '{plan.spec['name']}'"}},
            "scoring": {}, "train_stats": {runner.model_name: {"round": runner.model_round, "phase": runner.phase,
                                                               "metrics": runner.status()["metrics"]}},
            "datastore": store.status(),
            "medloop": {"run_id": runner.run_id, **plan.track, "class_names": plan.class_names,
                        "mask_labels": plan.mask_labels, "needs_class": needs_class, "budget": plan.budget,
                        "lease_seconds": oracle.lease_seconds, "max_upload_bytes": max_upload_bytes},
        })

    @api.post("/activelearning/{strategy}")
    def activelearning(strategy: str, params: dict | None = Body(None)) -> dict:
        """Lease the next image of the queue, in the strategy's order, to ``params.client_id``; ``{}`` when none
        is open (all leased, or the model is retraining)."""
        if strategy not in strategy_names:
            raise RequestError(f"unknown strategy '{strategy[:40]}'; this run's strategy is '{plan.spec['label']}'", 404)
        client = _client((params or {}).get("client_id"))
        item = oracle.lease(client)
        if item is None:
            return {}
        return clean({**store.info(item["id"]), **item,
                      "strategy": {plan.spec["label"]: {"client_id": client, "round": item["round"]}}})

    @api.get("/datastore/")
    def datastore(output: Literal["stats", "all", "train"] = "stats") -> Any:
        if output == "all":
            return clean(store.json())
        if output == "train":
            return store.datalist()
        return store.status()

    @api.get("/datastore/image")
    def image(image: str) -> FileResponse:
        path = store.path(store.check(image))
        return FileResponse(path, media_type="image/png", filename=path.name)

    @api.get("/datastore/image/info")
    def image_info(image: str) -> dict:
        return clean(store.info(image))

    @api.get("/datastore/label")
    def label(label: str, tag: str = "final") -> FileResponse:
        path = store.path(store.check(label), tag)
        return FileResponse(path, media_type="image/png", filename=path.name)

    @api.put("/datastore/label")
    def save_label(image: str, tag: str = "final", params: str = Form("{}"), label: UploadFile = File(...)) -> dict:
        """The expert's label map (multipart field ``label``, a PNG) and, for image classes, ``params.class``."""
        sample_id = store.check(image)
        if tag != "final":
            raise RequestError(f"only tag 'final' (the expert's label) can be uploaded; got '{tag[:40]}' "
                               "('original' holds the model's proposals)", 400)
        try:
            options = json.loads(params or "{}")
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise RequestError("the 'params' field must be a JSON object, e.g. {\"class\": 1, \"client_id\": \"ann1\"}",
                               400)
        if options.get("run_id") not in (None, runner.run_id):
            raise RequestError("this label was made in another run (its run_id differs from this server's); reload "
                               "the page of this server", 409)
        mask = read_label(label.file.read(max_upload_bytes + 1), store.shape(sample_id), plan.mask_labels, sample_id)
        cls = options.get("class")
        if needs_class:
            if isinstance(cls, str) and cls in plan.class_names:
                cls = plan.class_names.index(cls)
            if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < len(plan.class_names):
                names = ", ".join(f"{i}={n}" for i, n in enumerate(plan.class_names))
                raise RequestError(f"params.class must be the image's class ({names}); got {cls!r}", 422)
        elif cls is not None:
            raise RequestError("this run has no image classes (method ravanbakhsh2018 labels masks only); "
                               "drop params.class", 422)
        record, created = oracle.answer(sample_id, mask, cls, _client(options.get("client_id")))
        return clean({"image": sample_id, "label": sample_id, "tag": "final", "acknowledged": True,
                      "duplicate": not created, "class": record["class"], "labeled": store.status()["completed"],
                      "budget": plan.budget})

    @api.post("/infer/{model}")
    def infer(model: str, image: str, output: Literal["image", "json", "all"] | None = None) -> Any:
        """The latest model's proposal for an image: the label map (PNG) and ``params`` (class probabilities,
        mean uncertainty, model round), as MONAI Label's multipart answer, or one of them with ``output``."""
        if model != runner.model_name:
            raise RequestError(f"unknown model '{model[:40]}'; this run's model is '{runner.model_name}'", 404)
        model_round, proposal = runner.infer(store.check(image))
        params: dict[str, Any] = {"model_round": model_round, "label_names": plan.mask_labels}
        if proposal.probs is not None:
            params["class_probabilities"] = dict(zip(plan.class_names, proposal.probs.tolist()))
        if proposal.uncertainty is not None:
            params["uncertainty_mean"] = float(np.mean(proposal.uncertainty))
        if output == "json" or (output is None and proposal.mask is None):
            return clean(params)
        if proposal.mask is None:
            raise RequestError("the model proposes no mask yet (method 1 trains its segmenter at the record_at "
                               "stages); ask for output=json", 409)
        png = png_bytes(proposal.mask)
        if output == "image":
            return Response(png, media_type="image/png")
        return _multipart(params, png, f"{store.path(image).stem}.png")

    # ----------------------------------------------------------------------------------------- the UI's own

    @api.get("/api/status")
    def status(client_id: str | None = None) -> dict:
        return clean(runner.status(_client(client_id)))

    @api.get("/api/item")
    def item(image: str) -> dict:
        """One image for the editor: pixels, the model's proposal and uncertainty, the final label if any, as
        raw uint8 arrays (base64), so the browser never reinterprets a PNG's values."""
        sample_id = store.check(image)
        pixels = store.image(sample_id)
        info = store.proposal_info(sample_id)
        answer = store.answer(sample_id)
        has = store.info(sample_id)["labels"]
        return clean({
            "id": sample_id, "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
            "channels": 1 if pixels.ndim == 2 else int(pixels.shape[2]), "image": _b64(pixels),
            "proposal": _b64(store.label(sample_id, "original")) if "original" in has else None,
            "uncertainty": _b64(store.uncertainty(sample_id)) if "uncertainty" in info else None,
            "final": _b64(store.label(sample_id, "final")) if answer is not None else None,
            "class": answer["class"] if answer is not None else None, "probs": info.get("probs"),
            "score": info.get("score"), "model_round": info.get("model_round")})

    @api.post("/api/lease")
    def lease(image: str, client_id: str | None = None) -> dict:
        """Open a given image of the queue (409 while another annotator holds it)."""
        return clean(oracle.lease(_client(client_id), store.check(image)))

    @api.post("/api/release")
    def release(image: str, client_id: str | None = None) -> dict:
        """Skip: hand the image back; it comes to this annotator again after the others."""
        oracle.release(_client(client_id), store.check(image))
        return {"released": image}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request) -> Response:
        if "token" in request.query_params:  # as Jupyter: trade the URL's token for a cookie, drop it from the URL
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(cookie, token, httponly=True, samesite="strict", path="/")
            return response
        html = files("medloop.serve").joinpath("static", "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                           "default-src 'self'; img-src 'self' data: blob:; style-src 'self'"})

    @api.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC:
            raise RequestError(f"no static file '{name[:40]}'", 404)
        body = files("medloop.serve").joinpath("static", name).read_bytes()
        return Response(body, media_type=_STATIC[name], headers={"Cache-Control": "no-store"})

    app.include_router(api)
    return app


def _bind(host: str, port: int):
    import socket

    from medloop.errors import ConfigError

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"The '--host' option {host!r} cannot be resolved ({exc}); use 127.0.0.1") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port (0: any free one)") \
            from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(config, out, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, resume: bool = False,
          lease_seconds: float = 300.0, echo=print) -> None:
    """Run the loop of ``config``'s served track (see ``serve.runner``) behind the annotation server until
    interrupted; ``echo`` gets the URL with the access token (generated unless ``token`` is given).

    The background training uses one CPU thread (``torch.set_num_threads(1)``, process-wide), so the request
    handlers keep a core and a resumed round computes exactly what the killed one did.
    """
    import re

    import torch
    import uvicorn

    from medloop.errors import ConfigError

    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,128}", token):
        raise ConfigError("The '--token' option must be 8 to 128 URL-safe characters (letters, digits, . _ ~ -); "
                          "leave it out to get a random one")
    if lease_seconds <= 0:
        raise ConfigError(f"The '--lease' option must be > 0 seconds; got {lease_seconds}")
    torch.set_num_threads(1)
    runner = Runner(config, out, resume=resume, lease_seconds=lease_seconds)
    token = token or secrets.token_hex(24)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    echo(f"medloop serve: {runner.config.name} ({', '.join(f'{k} {v}' for k, v in runner.plan.track.items())})")
    echo(f"run folder: {runner.out} (datastore: {runner.datastore.folder})")
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: listening on {host}: anyone who can reach this machine and has the token can label")
    echo(f"open in a browser:\n    http://{shown}:{bound}/?token={token}")
    runner.start()
    server = uvicorn.Server(uvicorn.Config(create_app(runner, token), log_level="warning", access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=2))
    try:
        server.run(sockets=[sock])
    finally:
        runner.datastore.flush()  # the index catches up with answers.jsonl before the process ends
