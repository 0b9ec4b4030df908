"""The pipeline's store: one folder (local) or prefix (``s3://bucket/prefix``) holding every run.

Layout (docs/pipeline.md)::

    STORE/ledger.json                the commit record: finished runs, watermarks, versions, aliases
    STORE/pipeline.lock              who runs now (local: flock; S3: a conditional-write object)
    STORE/runs/RUN_ID/<stage>/       each stage's output, ``stage.json`` written last
    STORE/runs/RUN_ID/decision.json  the gate's verdict with its numbers

Stages read and write local folders. On a local store those folders ARE the store; on an object
store each stage works in a local mirror (``work``) and its folder is uploaded when the stage is
complete, files first and ``stage.json`` last, so a stage folder in the store is either complete
or ignored. Small records (ledger, decision, stage markers) are single objects written whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, DistillError, ExitCode, LockHeld


class StoreError(DistillError):
    """The store cannot be reached or refused a write; the message names its URL."""

    exit_code = ExitCode.IO_ERROR


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Store:
    """The operations the pipeline needs, on keys relative to the store's root ("runs/x/stage.json")."""

    url: str
    remote: bool = False

    def local(self, key: str) -> Path:
        """The local folder or file where ``key`` is read and written."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes | None:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``key`` whole, atomically (readers see the old or the new bytes)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove ``key`` (a file or a folder with everything under it) if present."""
        raise NotImplementedError

    def push(self, key: str, *, last: str | None = None) -> None:
        """Upload the local folder ``key`` (no-op on a local store); ``last`` is uploaded after the rest."""

    def pull(self, key: str) -> Path:
        """The local copy of ``key`` (a folder), downloaded first when the store is remote."""
        return self.local(key)

    def list(self, key: str) -> list[str]:
        """Names directly under the folder ``key`` (empty when there is none)."""
        raise NotImplementedError

    def lock(self, stale_after_s: float, purpose: str) -> Any:
        raise NotImplementedError

    def check(self) -> None:
        """Fail with a one-line StoreError when the store cannot be reached or written."""

    # JSON helpers
    def read_json(self, key: str) -> Any | None:
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreError(f"{self.url}/{key}: not valid JSON ({exc}); the store was changed by hand?") from None

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


class LocalStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def local(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        from distill.atomic import atomic_write_bytes

        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    def delete(self, key: str) -> None:
        path = self.root / key
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def list(self, key: str) -> list[str]:
        path = self.root / key
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"store {self.root}: exists and is not a folder")
        parent = self.root
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise StoreError(f"store {self.root}: {parent} is not writable")
        # the folder itself is made by the lock, which removes it again if the run wrote nothing

    def lock(self, stale_after_s: float, purpose: str) -> Any:
        from distill.lock import FolderLock

        # flock: the kernel frees it when the holder dies, however it dies, so a dead owner's lock
        # is taken over at once; the stale timeout matters for object stores only.
        return FolderLock(self.root, "pipeline.lock", purpose=purpose)


class ObjectStore(Store):
    """An fsspec file system (``s3://``, also ``gs://``, ``az://``, ``memory://``) with a local mirror."""

    remote = True

    def __init__(self, url: str, work: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.protocol = self.url.split("://", 1)[0]
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            extra = " (pip install 'distill[s3]')" if self.protocol == "s3" else ""
            raise ConfigError(f"store {self.url}: {exc}{extra}") from None
        self.base = self.base.rstrip("/")
        self.work = Path(work).expanduser().absolute()

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}" if key else self.base

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, ConnectionError) as exc:
            raise StoreError(f"store {self.url}: {what} failed: {exc}") from None
        except Exception as exc:  # botocore's endpoint and credential errors are not OSErrors
            if type(exc).__name__ in ("EndpointConnectionError", "NoCredentialsError", "ClientError",
                                      "ConnectTimeoutError", "ReadTimeoutError", "PartialCredentialsError"):
                raise StoreError(f"store {self.url}: {what} failed: {exc}") from None
            raise

    def local(self, key: str) -> Path:
        return self.work / key

    def exists(self, key: str) -> bool:
        return bool(self._call(f"checking {key}", self.fs.exists, self._path(key)))

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._call(f"reading {key}", self.fs.cat_file, self._path(key))
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call(f"writing {key}", self.fs.pipe_file, self._path(key), data)  # one PUT: whole or nothing

    def delete(self, key: str) -> None:
        try:
            self._call(f"deleting {key}", self.fs.rm, self._path(key), recursive=True)
        except FileNotFoundError:
            pass
        local = self.local(key)
        if local.is_dir():
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()

    def list(self, key: str) -> list[str]:
        try:
            entries = self._call(f"listing {key}", self.fs.ls, self._path(key), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def push(self, key: str, *, last: str | None = None) -> None:
        local = self.local(key)
        files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
        tail = [p for p in files if last is not None and p.relative_to(local).as_posix() == last]
        for path in [p for p in files if p not in tail] + tail:
            rel = path.relative_to(self.work).as_posix()
            self._call(f"uploading {rel}", self.fs.put_file, str(path), self._path(rel))

    def pull(self, key: str) -> Path:
        local = self.local(key)
        try:
            found = self._call(f"listing {key}", self.fs.find, self._path(key))
        except FileNotFoundError:
            found = []
        for remote in found:
            rel = remote[len(self.base) + 1:]
            target = self.work / rel
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            self._call(f"downloading {rel}", self.fs.get_file, remote, str(tmp))
            os.replace(tmp, target)
        return local

    def check(self) -> None:
        bucket = self.base.split("/", 1)[0]
        try:
            self._call("reaching the bucket", self.fs.ls, bucket, refresh=True)
        except FileNotFoundError:
            raise ConfigError(f"store {self.url}: bucket '{bucket}' does not exist") from None
        self.work.mkdir(parents=True, exist_ok=True)

    def lock(self, stale_after_s: float, purpose: str) -> Any:
        if self.protocol not in ("s3", "s3a"):
            raise ConfigError(f"store {self.url}: the run lock needs S3's conditional writes; use a folder or s3://")
        return ObjectLock(self, "pipeline.lock", stale_after_s, purpose)


class ObjectLock:
    """A lock object created with a conditional write (``If-None-Match: *``): exactly one creator wins.

    The holder rewrites it every ``stale_after_s / 4`` seconds (a heartbeat, ``If-Match`` its own
    ETag). A lock whose heartbeat is older than ``stale_after_s``, or whose owner on this host is
    dead, is stale: it is taken over with ``If-Match`` the stale object's ETag, so of two processes
    taking over the same stale lock exactly one succeeds. Release deletes it ``If-Match`` our ETag.
    """

    def __init__(self, store: ObjectStore, key: str, stale_after_s: float, purpose: str) -> None:
        self.store = store
        self.key = key
        self.path = store._path(key)
        self.stale_after_s = float(stale_after_s)
        self.purpose = purpose
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _body(self) -> bytes:
        import sys

        return json.dumps({"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                           "command": " ".join(sys.argv)[:300], "heartbeat": time.time(),
                           "heartbeat_iso": now_iso(), "stale_after_s": self.stale_after_s}).encode()

    def _bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.path.partition("/")
        return bucket, key

    def _put(self, **condition: str) -> str:
        bucket, key = self._bucket_key()
        reply = self.store._call("writing the lock", self.store.fs.call_s3, "put_object", Bucket=bucket, Key=key,
                                 Body=self._body(), **condition)
        return reply["ETag"]

    def _read(self) -> tuple[dict[str, Any], str] | None:
        """The lock's content and an ETag no newer than it: the ETag is read first, so a takeover
        conditioned on it fails if the object changed after the content we judged."""
        try:
            etag = self.store.fs.info(self.path, refresh=True)["ETag"]
            data = self.store.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            info = json.loads(data)
        except ValueError:
            info = {}
        return info, etag

    @staticmethod
    def _precondition_failed(exc: Exception) -> bool:
        text = str(exc)
        return isinstance(exc, FileExistsError) or "PreconditionFailed" in text or "pre-conditions" in text \
            or "412" in text or "ConditionalRequestConflict" in text

    def _stale(self, info: dict[str, Any]) -> str | None:
        from distill.lock import pid_alive

        beat = info.get("heartbeat")
        if not isinstance(beat, (int, float)):
            return "unreadable lock"
        age = time.time() - beat
        if age > self.stale_after_s:
            return f"last heartbeat {age:.0f} s ago (stale after {self.stale_after_s:.0f} s)"
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not pid_alive(info["pid"]):
            return f"its process {info['pid']} on this host is gone"
        return None

    def acquire(self) -> "ObjectLock":
        for _ in range(3):
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except StoreError as exc:
                if not self._precondition_failed(exc):
                    raise
            except Exception as exc:  # noqa: BLE001
                if not self._precondition_failed(exc):
                    raise
            held = self._read()
            if held is None:  # released between our write and our read: try again
                continue
            info, etag = held
            why = self._stale(info)
            if why is None:
                raise LockHeld(f"store {self.store.url}: run in progress by pid {info.get('pid')} on {info.get('host')} "
                               f"({info.get('purpose', '')}), heartbeat {info.get('heartbeat_iso')}; wait for it to end "
                               f"(a lock is stale {self.stale_after_s:.0f} s after its last heartbeat)")
            try:
                self.etag = self._put(IfMatch=etag)
            except Exception as exc:  # noqa: BLE001
                if self._precondition_failed(exc):
                    raise LockHeld(f"store {self.store.url}: another process took over the stale lock first") from None
                raise
            import sys

            print(f"pipeline: took over a stale lock of pid {info.get('pid')} on {info.get('host')}: {why}", file=sys.stderr)
            break
        else:
            raise LockHeld(f"store {self.store.url}: could not take the lock (its holders keep changing)")
        self._thread = threading.Thread(target=self._beat, name="pipeline-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        import sys

        interval = max(self.stale_after_s / 4, 0.2)
        while not self._stop.wait(interval):
            with self._mutex:
                if self.etag is None:
                    return
                try:
                    self.etag = self._put(IfMatch=self.etag)
                except Exception as exc:  # noqa: BLE001
                    if self._precondition_failed(exc):
                        self.lost = True
                        print(f"pipeline: lost the store lock {self.path} (taken over as stale); stopping at the next "
                              "stage boundary", file=sys.stderr)
                        return
                    # a failed heartbeat is retried at the next beat; staleness needs several in a row

    def check(self) -> None:
        if self.lost:
            raise LockHeld(f"store {self.store.url}: this run's lock was taken over as stale (heartbeats failed for "
                           f"{self.stale_after_s:.0f} s); rerun the same run id to resume")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._mutex:
            if self.etag is None or self.lost:
                return
            bucket, key = self._bucket_key()
            try:
                self.store.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self.etag)
            except Exception:  # noqa: BLE001 - taken over meanwhile: not ours to delete
                pass
            self.etag = None

    def __enter__(self) -> "ObjectLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def open_store(url: str, work: str | Path | None, name: str, storage_options: dict[str, Any] | None = None) -> Store:
    """A LocalStore for a path, an ObjectStore (mirrored under ``work``) for ``scheme://``."""
    if "://" in url and not url.startswith("file://"):
        if work is None:
            work = Path(os.environ.get("DISTILL_PIPELINE_WORK", "~/.cache/distill/pipeline")).expanduser() / name
        return ObjectStore(url, work, storage_options)
    return LocalStore(url.removeprefix("file://"))
