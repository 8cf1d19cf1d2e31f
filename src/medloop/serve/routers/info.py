"""MONAI Label's ``/info/``: the run's name, labels (name -> value), model, strategy and datastore counts."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from medloop.serve.served_run import ServedRun, served

__all__ = ["router"]

router = APIRouter(prefix="/info", tags=["info"])


@router.get("/")
def info(run: ServedRun = Depends(served)) -> dict:
    return run.info()
