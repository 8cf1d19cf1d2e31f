"""MONAI Label's ``/infer/{model}``: the latest model's proposal for an image of the datastore.

The default answer is MONAI Label's multipart form: a ``params`` part (JSON) and, when the model proposes a mask,
an ``image`` part in ``params.result_extension`` (3D Slicer asks for ``.nrrd``; PNG when none is asked). A model
that proposes no mask (method 1 before its segmenter trains) answers the same form without the ``image`` part,
so MONAI Label's client still parses it (it returns no file and ``{"params": "<the JSON>"}``).
``output=json`` gives the params alone, ``output=image`` the file alone.
"""

from __future__ import annotations

import json
import mimetypes
import secrets
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from medloop.serve.datastore import RequestError
from medloop.serve.served_run import ServedRun, served

__all__ = ["multipart", "router"]

router = APIRouter(prefix="/infer", tags=["infer"])


def multipart(params: dict, label: bytes | None, filename: str | None) -> Response:
    boundary = secrets.token_hex(16)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\nContent-Type: application/json\r\n\r\n'
             .encode() + json.dumps(params).encode() + b"\r\n"]
    if label is not None:
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                     f"Content-Type: {kind}\r\n\r\n".encode() + label + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(parts), media_type=f"multipart/form-data; boundary={boundary}")


@router.post("/{model}")
def infer(model: str, image: str = "", output: Literal["image", "json", "all"] | None = None,
          session_id: str = "", params: str = Form("{}"), file: UploadFile | None = File(None),
          label: UploadFile | None = File(None), run: ServedRun = Depends(served)) -> Any:
    if session_id or file is not None or label is not None:
        raise RequestError("this server infers on the images of its datastore only (no sessions, uploaded images or "
                           "scribbles); send ?image=<id> from GET /datastore/?output=all", 422)
    if not image:
        raise RequestError("the 'image' query parameter is missing; send ?image=<id> of a datastore image", 422)
    result = run.infer(model, image, params)
    if output == "json":
        return result.params
    if output == "image":
        if result.label is None:
            raise RequestError(f"the model proposes no mask for this image ({result.params.get('note', '')}); ask "
                               "for output=json", 409)
        return Response(result.label, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{result.filename}"'})
    return multipart(result.params, result.label, result.filename)
