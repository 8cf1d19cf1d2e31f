"""MONAI Label's ``/auth`` routes over medloop's one run token, and the check every other route depends on.

The token is accepted as an ``Authorization: Bearer T`` header, a ``?token=T`` query parameter, a server URL
``http://host:port/t/T`` (for 3D Slicer, whose image downloads carry no header), or the cookie that
``GET /?token=T`` sets for the browser. MONAI Label's client asks ``GET /auth/`` whether auth is on (it is,
always), exchanges a user name and password for a token at ``POST /auth/token`` (the password is the run's
token; the user name is only shown back) and checks it at ``GET /auth/token/valid``: so 3D Slicer's login dialog
works with the token as the password. ``/auth/`` and ``/auth/token`` answer without the token: they tell nothing
about the run, and the exchange only hands back the token it was given.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request

from medloop.serve.served_run import ServedRun, served

__all__ = ["PATH_TOKEN_PREFIX", "PATH_TOKEN_SCOPE", "require_token", "router"]

PATH_TOKEN_PREFIX = "/t/"  # a server URL that carries the token: http://host:port/t/TOKEN (see app._PathToken)
PATH_TOKEN_SCOPE = "medloop.path_token"  # set in the ASGI scope of a request that came through it

router = APIRouter(prefix="/auth", tags=["auth"])

_MISSING = ("a valid token is required: open the URL `medloop serve` printed, or send 'Authorization: Bearer TOKEN' "
            "or '?token=TOKEN' (MONAI Label's client and 3D Slicer: log in with the token as the password)")


def given_token(request: Request, run: ServedRun) -> str:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    if "token" in request.query_params:
        return request.query_params["token"]
    return request.cookies.get(run.cookie, "")


def require_token(request: Request, run: ServedRun = Depends(served)) -> None:
    """401 unless the request carries the run's token."""
    if not run.token_matches(given_token(request, run)):
        raise HTTPException(401, _MISSING, headers={"WWW-Authenticate": "Bearer"})


@router.get("/")
def auth_enabled(request: Request, run: ServedRun = Depends(served)) -> dict:
    """MONAI Label's probe: auth is on (no identity provider, ``realm``, to go to), unless the server URL itself
    carries a valid token (``/t/TOKEN``, see ``app``): then the client needs no login."""
    in_url = bool(request.scope.get(PATH_TOKEN_SCOPE)) and run.token_matches(given_token(request, run))
    return {"enabled": not in_url, "client_id": "medloop", "realm": None}


@router.post("/token")
def access_token(username: str = Form(""), password: str = Form(""), grant_type: str = Form("password"),
                 run: ServedRun = Depends(served)) -> dict:
    """MONAI Label's password grant: the password is the run's token, handed back as the bearer token."""
    if grant_type not in ("", "password"):
        raise HTTPException(400, f"grant_type must be 'password'; got '{grant_type[:20]}'")
    if not run.token_matches(password):
        raise HTTPException(401, "the password is not this run's token; use the token `medloop serve` printed "
                                 "(after '?token=') as the password", headers={"WWW-Authenticate": "Bearer"})
    return {"access_token": run.token, "token_type": "Bearer"}


@router.get("/token/valid", dependencies=[Depends(require_token)])
def valid_token() -> dict:
    """200 with the user (MONAI Label's shape) while the token is valid; 401 otherwise."""
    return {"username": "annotator", "email": None, "name": None, "roles": ["annotator"]}
