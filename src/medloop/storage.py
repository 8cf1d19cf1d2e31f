"""Durable files: one atomic write for everything a run writes, and append-only logs that survive a kill.

Every file a run writes goes through ``atomic_write``: the bytes go to a temporary file in the same folder, are
flushed and fsynced, and only then replace the target (``os.replace``), so a reader sees the old file or the new
one, never half of one. Append-only logs (``append_jsonl``) are fsynced line by line; a kill can leave a torn
last line, which ``read_jsonl`` ignores and the next ``append_jsonl`` cuts off first, so a later record never
lands on the fragment's line (where it would be lost at the next read).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from medloop.errors import DataError

__all__ = ["atomic_write", "write_bytes", "write_text", "write_json", "save_torch", "save_npz", "save_figure",
           "append_jsonl", "read_jsonl"]

log = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems do not open folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary binary file that then replaces ``path``.

    The parent folder is created. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent))


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` through ``atomic_write`` (model weights, checkpoints, tensors)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def save_npz(path: str | Path, compressed: bool = True, **arrays: Any) -> Path:
    """``numpy.savez_compressed`` (or ``savez``) through ``atomic_write``."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez
    return atomic_write(path, lambda fh: save(fh, **arrays))


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """A matplotlib figure through ``atomic_write`` (the format follows the file name, as ``savefig``)."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **kwargs)
    return write_bytes(path, buffer.getvalue())


def _cut_torn_tail(path: Path) -> None:
    """Remove a last line that has no newline (written by a process killed mid-line)."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # walk back to the last newline (logs are small enough to read their tail in blocks)
        pos, block = size, 4096
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        log.warning("%s: removing a torn last line (%d bytes) left by an interrupted write", path, size - keep)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def append_jsonl(path: str | Path, record: Any) -> None:
    """Append one JSON line and fsync it; a torn last line left by a kill is cut off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _cut_torn_tail(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _salvage(line: str) -> Any | None:
    """A record written after a torn fragment on the same line (logs written before torn tails were cut)."""
    pos = line.find("{", 1)
    while pos > 0:
        try:
            return json.loads(line[pos:])
        except json.JSONDecodeError:
            pos = line.find("{", pos + 1)
    return None


def read_jsonl(path: str | Path) -> list[Any]:
    """The complete records of a JSON-lines log (``[]`` when it does not exist).

    A last line without a newline was torn by a kill and never acknowledged: it is ignored. A damaged line
    before the end is recovered when a whole record follows a fragment on it; otherwise it is a DataError.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or torn
    out = []
    for n, raw in enumerate(complete, 1):
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            rec = _salvage(text)
            if rec is None:
                raise DataError(f"{path}: line {n} is not valid JSON and is not the last line, so it is not a torn "
                                "write; the log was edited or damaged. Restore it from a copy or remove that line")
            log.warning("%s: line %d holds a torn fragment before a complete record; the record is kept", path, n)
            out.append(rec)
    return out
