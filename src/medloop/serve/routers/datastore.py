"""MONAI Label's ``/datastore``: the index, images, labels (download and upload)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse

from medloop.serve.served_run import ServedRun, clean, served

__all__ = ["router"]

router = APIRouter(prefix="/datastore", tags=["datastore"])


@router.get("/")
def datastore(output: Literal["stats", "all", "train"] = "stats", run: ServedRun = Depends(served)) -> Any:
    store = run.datastore
    if output == "all":
        return clean(store.json())
    if output == "train":
        return store.datalist()
    return store.status()


@router.get("/image")
def image(image: str, run: ServedRun = Depends(served)) -> FileResponse:
    """The image file (PNG, named as in the index: 3D Slicer loads it by that name)."""
    path = run.datastore.path(run.datastore.check(image))
    return FileResponse(path, media_type="image/png", filename=path.name)


@router.get("/image/info")
def image_info(image: str, run: ServedRun = Depends(served)) -> dict:
    return clean(run.datastore.info(image))


@router.get("/label")
def label(label: str, tag: str = "final", run: ServedRun = Depends(served)) -> FileResponse:
    path = run.datastore.path(run.datastore.check(label), tag)
    return FileResponse(path, media_type="image/png", filename=path.name)


@router.put("/label")
def save_label(image: str, tag: str = "final", params: str = Form("{}"), label: UploadFile = File(...),
               run: ServedRun = Depends(served)) -> dict:
    """The expert's label map (multipart field ``label``: PNG, NIfTI or NRRD) with ``params`` (JSON: the image
    class, ``label_info``, ``client_id``); acknowledged only once it is durable."""
    data = label.file.read(run.max_upload_bytes + 1)
    return run.save_label(image, tag, data, label.filename or "label", params)
