"""MONAI Label's ``/activelearning/{strategy}``: the next image of the queue, leased to the client that asks."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends

from medloop.serve.served_run import ServedRun, served

__all__ = ["router"]

router = APIRouter(prefix="/activelearning", tags=["activelearning"])


@router.post("/{strategy}")
def next_sample(strategy: str, params: dict | None = Body(None), run: ServedRun = Depends(served)) -> dict:
    """Lease the next image, in the strategy's order, to ``params.client_id``; ``{}`` when none is open."""
    return run.next_item(strategy, params)
