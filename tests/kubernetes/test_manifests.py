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


# What the generate and eval Jobs do with each of distill's exit codes. Every code needs a decision:
# a code added to distill/errors.py without one here (and in the manifests) fails this test.
FAIL, IGNORE, RETRY, SUCCESS = "FailJob", "Ignore", "retry (counted)", "success"
DECISIONS = {
    ExitCode.OK: SUCCESS,
    ExitCode.INTERNAL: RETRY,  # a crash can be transient (a node's fault); bounded by the backoff limit
    ExitCode.BAD_INPUT: FAIL,  # the same input fails the same way
    ExitCode.GATE_FAILED: FAIL,  # a verdict
    ExitCode.MODEL_FAILED: RETRY,  # the teacher or a model did not answer: often a server restarting
    ExitCode.DIVERGED: FAIL,  # deterministic
    ExitCode.LOCK_HELD: RETRY,  # the pod being replaced may still hold the folder
    ExitCode.NOTHING_TO_DO: FAIL,  # nothing a retry can change
    ExitCode.STAGE_FAILED: RETRY,  # `pipeline run` only: a stage's crash or a model down; a rerun resumes it
    ExitCode.IO_ERROR: RETRY,  # storage hiccups pass; a full disk fails the index after the backoff
    ExitCode.PREEMPTED: IGNORE,  # evicted or drained: resumable, not the job's fault
}


def test_every_exit_code_has_a_decision():
    assert set(DECISIONS) == set(ExitCode), f"exit codes without a decision: {set(ExitCode) - set(DECISIONS)}"


@pytest.mark.parametrize("target", list(TARGETS))
def test_job_failure_policies_follow_the_decisions(target, rendered):
    jobs = {d["metadata"]["name"]: d for d in documents(rendered[target]) if d["kind"] == "Job"}
    assert set(jobs) == {"distill-generate", "distill-eval"}
    for name, job in jobs.items():
        rules = job["spec"]["podFailurePolicy"]["rules"]
        by_action: dict[str, set[int]] = {}
        for rule in rules:
            if "onExitCodes" in rule:
                assert rule["onExitCodes"]["containerName"] == "distill" and rule["onExitCodes"]["operator"] == "In"
                by_action.setdefault(rule["action"], set()).update(rule["onExitCodes"]["values"])
        for action in (FAIL, IGNORE):
            assert by_action.pop(action) == {int(c) for c, d in DECISIONS.items() if d == action}, (name, action)
        assert not by_action, (name, by_action)  # counted retries are the Job's default: no rule
        assert any(rule.get("onPodConditions") == [{"type": "DisruptionTarget", "status": "True"}]
                   and rule["action"] == IGNORE for rule in rules)
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it


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
