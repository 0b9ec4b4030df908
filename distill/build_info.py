"""What this ``distill`` runs on: its own version, torch, CUDA, vLLM, Python, and, inside the
container image, the image's build record (target, build commit, base image, build date).

The image writes that record at build time to ``/etc/distill/build.json`` (``DISTILL_BUILD_INFO``
names another file); ``distill --version`` prints it, and every corpus manifest, student
(``final/distill.json``) and eval report carries it under ``build``, so an artifact says which
image and code produced it.

    python -m distill.build_info --write FILE --target cpu --commit SHA --base-image IMAGE
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from distill import __version__

ENV = "DISTILL_BUILD_INFO"
DEFAULT_PATH = "/etc/distill/build.json"


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def runtime() -> dict[str, Any]:
    """The versions this process runs with (no import of vllm: its metadata is enough)."""
    info: dict[str, Any] = {"distill": __version__, "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda  # None on a CPU build
    except ImportError:
        info["torch"] = None
    for name in ("transformers", "deepspeed", "vllm"):
        info[name] = _dist_version(name)
    return info


def image_record() -> dict[str, Any] | None:
    """The image's build record, or None outside an image. A damaged record is reported, not fatal:
    it only describes the build."""
    path = Path(os.environ.get(ENV, DEFAULT_PATH))
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"file": str(path), "error": f"unreadable: {exc}"}
    return record if isinstance(record, dict) else {"file": str(path), "error": "not a JSON object"}


@lru_cache(maxsize=1)
def build_info() -> dict[str, Any]:
    """What goes into manifests and reports under ``build``."""
    info = runtime()
    record = image_record()
    if record is not None:
        info["image"] = record
    return info


def version_text() -> str:
    """``distill --version``: one line per component."""
    info = build_info()
    lines = [f"distill {info['distill']}"]
    for key in ("python", "torch", "cuda", "transformers", "deepspeed", "vllm"):
        lines.append(f"  {key}: {info.get(key) or '-'}")
    image = info.get("image")
    if image:
        lines.append("  image: " + ", ".join(f"{k}={v}" for k, v in image.items() if k != "versions"))
    return "\n".join(lines)


def _write(args: argparse.Namespace) -> None:
    record = {
        "target": args.target,
        "commit": args.commit or "unknown",
        "base_image": args.base_image or "unknown",
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": runtime(),
    }
    path = Path(args.write)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="write the container image's build record")
    parser.add_argument("--write", required=True, help="the record file (the image's /etc/distill/build.json)")
    parser.add_argument("--target", required=True, help="the Dockerfile target: cpu, gpu or teacher")
    parser.add_argument("--commit", default="", help="the source commit the image was built from")
    parser.add_argument("--base-image", default="", help="the BASE_IMAGE build argument")
    _write(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
