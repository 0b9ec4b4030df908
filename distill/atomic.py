"""The one atomic-write helper: readers see the old file or the whole new one, never half.

Protocol: write a temp file in the destination's folder, flush and fsync it, rename it over the
destination, fsync the folder (so the rename itself survives a power cut), and remove the temp
file if anything fails on the way. Files get the process umask's mode like any other output (a
``mkstemp`` temp file would leave them owner-only).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def fsync_dir(folder: str | Path) -> None:
    """Persist a folder's entries (a rename or a new file in it). A no-op where folders cannot be
    opened for fsync (some network file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` (pid and random suffix: concurrent writers never share it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to produce the file at a temp path, then fsync and rename it to ``path``.

    For writers that want a path rather than bytes (Parquet, matplotlib). The parent folder is
    created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:
            fh.write(data)

    return atomic_write_with(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))
