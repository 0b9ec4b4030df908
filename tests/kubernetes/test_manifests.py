"""deploy/kubernetes/: every target renders with kustomize to its pinned output, every object
validates for every Kubernetes version EKS offers (custom resources against the vendored CRDs of
Kubeflow Training Operator v1, Kubeflow Trainer v2 and LeaderWorkerSet), and the objects say what
distill needs: the exit codes, the shard count, the stage configs, non-root pods."""

from __future__ import annotations

import copy

import pytest
import yaml

from distill.errors import ExitCode
from tests.kubernetes.manifests import EKS_VERSIONS, KUSTOMIZE_DIR, RENDERED, TARGETS, ToolMissing, documents, render, validate


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    try:
        return {name: render(name) for name in TARGETS}
    except ToolMissing as exc:
        pytest.fail(str(exc))


@pytest.mark.parametrize("target", list(TARGETS))
def test_each_target_renders_to_its_pinned_output(target, rendered):
    pinned = (RENDERED / f"{target}.yaml").read_text()
    assert rendered[target] == pinned, (f"kustomize build {TARGETS[target]} differs from deploy/kubernetes/rendered/"
                                        f"{target}.yaml: run `python -m tests.kubernetes.manifests render` and review the diff")


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_object_validates_for_every_eks_version(target, rendered):
    docs = documents(rendered[target])
    assert docs
    for doc in docs:
        for version in EKS_VERSIONS:
            validate(doc, version)


def _objects(rendered, target="eks") -> dict[str, dict]:
    return {doc["kind"]: doc for doc in documents(rendered[target])}


def test_the_validator_refuses_unknown_fields_and_wrong_types(rendered):
    cases = [
        ("eks", "Job", lambda d: d["spec"].__setitem__("completionsMode", "Indexed"), "completionsMode"),
        ("eks", "Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagee", "x"), "imagee"),
        ("eks", "PyTorchJob", lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].__setitem__("replica", 2), "replica"),
        ("trainer-v2", "TrainJob", lambda d: d["spec"]["trainer"].__setitem__("numNodes", "two"), "numNodes"),
        ("teacher-multinode", "LeaderWorkerSet", lambda d: d["spec"]["leaderWorkerTemplate"].__setitem__("sizes", 2), "sizes"),
    ]
    for target, kind, change, field in cases:
        doc = copy.deepcopy(_objects(rendered, target)[kind])
        change(doc)
        with pytest.raises(ValueError, match=field):
            validate(doc, EKS_VERSIONS[0])


def test_job_failure_policies_follow_the_exit_codes(rendered):
    jobs = {d["metadata"]["name"]: d for d in documents(rendered["eks"]) if d["kind"] == "Job"}
    for name, fail_on in (("distill-generate", {ExitCode.BAD_INPUT}), ("distill-eval", {ExitCode.BAD_INPUT, ExitCode.GATE_FAILED})):
        rules = jobs[name]["spec"]["podFailurePolicy"]["rules"]
        by_action = {}
        for rule in rules:
            if "onExitCodes" in rule:
                by_action.setdefault(rule["action"], set()).update(rule["onExitCodes"]["values"])
        assert by_action["FailJob"] == {int(c) for c in fail_on}, name
        assert by_action["Ignore"] == {int(ExitCode.PREEMPTED)}, name  # preempted: retried, not counted
        assert any(rule.get("onPodConditions") == [{"type": "DisruptionTarget", "status": "True"}] for rule in rules)
        assert jobs[name]["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_generate_workers_know_their_count(target, rendered):
    (job,) = [d for d in documents(rendered[target]) if d["kind"] == "Job" and d["metadata"]["name"] == "distill-generate"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["args"][-2:] == ["--shard", "auto"] and env["DISTILL_SHARD_COUNT"] == str(spec["completions"])


def _pod_specs(doc: dict) -> list[dict]:
    kind, spec = doc["kind"], doc.get("spec") or {}
    if kind in ("Deployment", "Job"):
        return [spec["template"]["spec"]]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    if kind == "LeaderWorkerSet":
        return [spec["leaderWorkerTemplate"][t]["spec"] for t in ("leaderTemplate", "workerTemplate")]
    if kind == "TrainJob":
        return [j["template"]["spec"]["template"]["spec"] for p in spec["runtimePatches"]
                for j in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]]
    return []


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_pod_runs_non_root_read_only_without_privilege(target, rendered):
    pods = [pod for doc in documents(rendered[target]) for pod in _pod_specs(doc)]
    assert len(pods) >= 4  # teacher, generate, eval and the training pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["serviceAccountName"] == "distill"
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/home/distill"} <= mounts  # the writable places a read-only root needs


def test_the_stage_configs_load_as_their_stages_configs():
    from distill.config import load_config
    from distill.eval import EvalConfig
    from distill.generate import GenerateConfig
    from distill.teachers.openai_http import EndpointConfig
    from distill.train import TrainConfig

    config = KUSTOMIZE_DIR / "base" / "config"
    for stage, cls in (("generate", GenerateConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        load_config(cls, str(config / f"{stage}.yaml"), {})
    teacher = yaml.safe_load((config / "teacher.yaml").read_text())
    endpoint = EndpointConfig(**teacher["endpoint"])
    assert endpoint.base_url == "http://distill-teacher:8000/v1" and endpoint.ready_timeout_s >= 600
    # the Service the recipe names is the one the manifests create, on that port
    service = [d for d in documents((RENDERED / "eks.yaml").read_text()) if d["kind"] == "Service"][0]
    assert service["metadata"]["name"] == "distill-teacher" and service["spec"]["ports"][0]["port"] == 8000
