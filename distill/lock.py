"""Exclusive output folders: one process writes a run folder (or one generation worker's part of it).

A lock is a file in the folder held with ``flock`` for the life of the run: the kernel releases it
when its process dies, however it dies, so a crashed run never leaves a lock that blocks the next
one. The holder writes who it is (pid, host, start time, command) into the file, and a second run
fails at once with ``LockHeld`` (exit 6) naming it. Temp files carry their writer's pid
(``distill.atomic.temp_path``); ``remove_orphan_temps`` deletes only those whose writer is gone.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from distill.errors import LockHeld

LOCK_NAME = ".distill.lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """``with FolderLock(folder): ...`` holds ``folder/name`` exclusively; ``LockHeld`` if taken."""

    def __init__(self, folder: str | Path, name: str = LOCK_NAME, purpose: str = "") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.purpose = purpose
        self._fd: int | None = None
        self._made_folder = False

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
                    + (f" ({info['purpose']})" if info.get("purpose") else ""))
        except (OSError, ValueError):
            return "another process"

    def acquire(self) -> "FolderLock":
        self._made_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(f"{self.folder}: in use by {self.holder()}; wait for that run to end (a lock "
                               "is released when its process exits, however it exits)") from None
            except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without flock (docs/deploy.md)
                os.close(fd)
                raise OSError(exc.errno, f"cannot lock the folder ({exc.strerror}): its file system does not "
                              "support flock; use a local disk or a mount with locking (docs/deploy.md)",
                              str(self.path)) from None
            # The file may have been unlinked by its previous holder between our open and flock:
            # holding a lock on a deleted file protects nothing, so start over.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "purpose": self.purpose, "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode("utf-8"))
            os.fsync(fd)
            self._fd = fd
            return self
        raise LockHeld(f"{self.folder}: could not take {self.path.name} (its holders keep changing)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._made_folder:  # a run that failed before writing leaves no folder behind
            try:
                self.folder.rmdir()
            except OSError:  # not empty: the run wrote something
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_orphan_temps(folder: str | Path, prefixes: set[str] | None = None) -> list[Path]:
    """Delete ``.NAME.tmp-PID-XXXX`` files in ``folder`` whose writer (PID, on this host) is gone,
    optionally only those whose ``.NAME`` part is in ``prefixes``. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(".*.tmp-*"):
        base, _, rest = path.name.partition(".tmp-")
        if prefixes is not None and base not in prefixes:
            continue
        pid = rest.split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        if path.is_dir():
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
