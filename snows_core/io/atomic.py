"""Files written whole or not at all: a temporary file beside the target, renamed over it (POSIX rename is atomic
within a folder), so a reader sees the old file or the new one, never a part, and two writers leave one whole."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replaced"]


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside `path` (its folder made if missing) for the block to write; renamed over
    `path` when the block ends, removed when it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
