"""Helpers for the annotation-server tests: tiny experiments of both methods, label PNGs, a live server."""

from __future__ import annotations

import io
import threading
import time

import numpy as np

from tests.integration.test_loop import TINY as LOOP_TINY

TOKEN = "test-token-0123456789"

# the loop tests' tiny chest experiment, with what these tests count on stated here
CHEST = {**LOOP_TINY, "name": "serve-chest", "strategies": [{"name": "class_balanced", "label": "uncertainty"}],
         "initial_per_class": 2, "query_per_class": 2, "record_at": [0.1, 0.4], "budget": 0.9, "max_rounds": 2}

CARDIAC = {
    "method": "ravanbakhsh2018", "name": "serve-cardiac",
    "data": {"source": "builtin:cardiac-mr", "size": 32, "options": {"n_volumes": 4, "min_slices": 4, "max_slices": 5}},
    "folds": 2, "budgets": [0.5], "cycles": [2], "strategies": ["discriminator"],
    "pix2pix": {"epochs": 1, "batch_size": 8, "g_channels": [4, 8, 8], "d_features": 4}, "n_mc_samples": 2,
    "fsl": False,
}

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.asarray(array).astype(np.uint8))
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def square(shape: tuple[int, int], value: int = 1, at: int = 4, size: int = 6) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[at:at + size, at:at + size] = value
    return mask


class LiveServer:
    """The app on a real socket (uvicorn in a thread), for concurrent clients and the browser."""

    def __init__(self, app):
        import uvicorn

        from medloop.serve.app import _bind

        sock = _bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
