"""The annotation server's web app: MONAI Label's API (one router per resource, as MONAI Label's
``endpoints/``), the UI's own endpoints and the UI itself, over one ``ServedRun``.

Every route but ``GET /health/`` and MONAI Label's auth probes (``GET /auth/``, ``POST /auth/token``) needs the
run's token (``routers.auth``). Ids are looked up in the datastore's index, never joined into paths; uploads are
checked (size, format, the image's shape, the run's label values) and refused with a 4xx naming the problem.
"""

from __future__ import annotations

import logging
import secrets

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from medloop.serve.datastore import RequestError
from medloop.serve.human import check_reads_per_image
from medloop.serve.routers.auth import PATH_TOKEN_PREFIX, PATH_TOKEN_SCOPE
from medloop.serve.runner import Runner
from medloop.serve.served_run import MAX_UPLOAD_BYTES, ServedRun

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]

log = logging.getLogger(__name__)


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
        too_large = (f"the request body is larger than {self.limit} bytes; a label map of the image's size is far "
                     "smaller")
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


class _PathToken:
    """ASGI middleware: ``/t/TOKEN/rest`` is served as ``/rest`` with ``Authorization: Bearer TOKEN``.

    For clients that take one server URL and send no header on some requests: 3D Slicer downloads images with a
    plain GET of ``<server URL>/datastore/image?image=ID``, outside MONAI Label's client, so a server URL that
    carries the token (``http://host:port/t/TOKEN``) is the one way those downloads can be authorized. The
    token is checked by ``routers.auth.require_token`` as any other (a wrong one is a 401).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(PATH_TOKEN_PREFIX):
            given, _, rest = path[len(PATH_TOKEN_PREFIX):].partition("/")
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
            scope = {**scope, "path": "/" + rest, "raw_path": ("/" + rest).encode(), PATH_TOKEN_SCOPE: True,
                     "headers": headers + [(b"authorization", b"Bearer " + given.encode("latin-1", "replace"))]}
        return await self.app(scope, receive, send)


def create_app(runner: Runner, token: str, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The app serving ``runner``'s datastore and loop to holders of ``token``."""
    from medloop import __version__
    from medloop.serve.routers import activelearning, auth, datastore, infer, info, ui

    app = FastAPI(title="medloop annotation server", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.run = ServedRun(runner, token, max_upload_bytes)
    app.add_middleware(_Guard, limit=max_upload_bytes)
    app.add_middleware(_PathToken)

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

    app.include_router(auth.router)
    guarded = [Depends(auth.require_token)]
    for router in (info.router, activelearning.router, datastore.router, infer.router, ui.router):
        app.include_router(router, dependencies=guarded)
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
          lease_seconds: float = 300.0, echo=print, reads_per_image: int | None = None) -> None:
    """Run the loop of ``config``'s served track (see ``serve.runner``) behind the annotation server until
    interrupted; ``echo`` gets the URL with the access token (generated unless ``token`` is given).
    ``reads_per_image``: how many different annotators label each image (``None``: as the resumed run, else 1).

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
    if reads_per_image is not None:
        check_reads_per_image(reads_per_image)
    torch.set_num_threads(1)
    runner = Runner(config, out, resume=resume, lease_seconds=lease_seconds, reads_per_image=reads_per_image)
    token = token or secrets.token_hex(24)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    echo(f"medloop serve: {runner.config.name} ({', '.join(f'{k} {v}' for k, v in runner.plan.track.items())})")
    echo(f"run folder: {runner.out} (datastore: {runner.datastore.folder})")
    if runner.reads_per_image > 1:
        echo(f"each image is labeled by {runner.reads_per_image} different annotators; the model trains on their "
             f"consensus; agreement: {runner.out / 'agreement.md'}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: listening on {host}: anyone who can reach this machine and has the token can label")
    echo(f"open in a browser:\n    http://{shown}:{bound}/?token={token}")
    echo(f"MONAI Label client / 3D Slicer server URL:\n    http://{shown}:{bound}{PATH_TOKEN_PREFIX}{token}")
    runner.start()
    server = uvicorn.Server(uvicorn.Config(create_app(runner, token), log_level="warning", access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=2))
    try:
        server.run(sockets=[sock])
    finally:
        runner.datastore.flush()  # the index catches up with answers.jsonl before the process ends
        runner.write_agreement()
