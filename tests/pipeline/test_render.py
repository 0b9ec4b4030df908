"""`distill pipeline render`: the CronJob and Argo CronWorkflow validate against the Kubernetes
schemas and the vendored CRDs (Argo Workflows, Kubeflow PyTorchJob), the SageMaker requests against
botocore's service models; the outputs are pinned as golden files (deploy/pipeline/rendered/).

    python -m tests.pipeline.test_render   # rewrite the golden files
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from distill.cli import main
from tests.kubernetes.manifests import EKS_VERSIONS, documents, validate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "pipeline" / "example.yaml"
GOLDEN = REPO / "deploy" / "pipeline" / "rendered"
SAGEMAKER = ["--image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/distill:gpu",
             "--role-arn", "arn:aws:iam::123456789012:role/distill-sagemaker",
             "--scheduler-role-arn", "arn:aws:iam::123456789012:role/distill-scheduler",
             "--s3-prefix", "s3://my-distill-bucket/sagemaker/support-assistant"]
CASES = {"cronjob.yaml": ["--target", "cronjob"], "argo.yaml": ["--target", "argo"],
         "sagemaker.json": ["--target", "sagemaker", *SAGEMAKER]}


def _render(*args: str, spec: Path = EXAMPLE) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["pipeline", "render", str(spec.relative_to(REPO) if spec.is_relative_to(REPO) else spec), *args])
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name):
    code, out = _render(*CASES[name])
    assert code == 0, out
    assert out == (GOLDEN / name).read_text(), f"regenerate with: python -m tests.pipeline.test_render ({name})"


@pytest.mark.parametrize("version", EKS_VERSIONS)
def test_kubernetes_definitions_validate(version):
    for name in ("cronjob.yaml", "argo.yaml"):
        for doc in documents((GOLDEN / name).read_text()):
            validate(doc, version)
            if doc["kind"] == "CronWorkflow":
                templates = {t["name"]: t for t in doc["spec"]["workflowSpec"]["templates"]}
                job = yaml.safe_load(templates["train"]["resource"]["manifest"])
                job.setdefault("metadata", {})["name"] = "x"  # generateName: the API server names it
                validate(job, version)


def test_kubernetes_definitions_act_on_the_exit_codes():
    (cron,) = [d for d in documents((GOLDEN / "cronjob.yaml").read_text()) if d["kind"] == "CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["startingDeadlineSeconds"] > 0
    job = cron["spec"]["jobTemplate"]["spec"]
    rules = {r["action"]: r for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r}
    assert rules["FailJob"]["onExitCodes"]["values"] == [2, 3] and rules["Ignore"]["onExitCodes"]["values"] == [75]
    (container,) = job["template"]["spec"]["containers"]
    assert container["args"][:2] == ["pipeline", "run"] and "--nothing-new-ok" in container["args"]
    assert container["envFrom"] == [{"secretRef": {"name": "distill-store", "optional": True}}]
    (flow,) = [d for d in documents((GOLDEN / "argo.yaml").read_text()) if d["kind"] == "CronWorkflow"]
    steps = [s[0]["name"] for s in flow["spec"]["workflowSpec"]["templates"][0]["steps"]]
    assert steps == ["prepare", "generate", "merge", "train", "finish"]
    templates = {t["name"]: t for t in flow["spec"]["workflowSpec"]["templates"]}
    assert "{{inputs.parameters.shard}}/4" in templates["generate-shard"]["container"]["args"]
    assert all("{{workflow.scheduledTime}}" in templates[n]["container"]["args"] for n in ("prepare", "merge", "finish"))


def test_sagemaker_requests_validate_against_botocore():
    import botocore.session
    from botocore.validate import ParamValidator

    rendered = json.loads((GOLDEN / "sagemaker.json").read_text())
    session = botocore.session.get_session()
    sagemaker = session.get_service_model("sagemaker")
    scheduler = session.get_service_model("scheduler")
    validator = ParamValidator()
    report = validator.validate(rendered["CreateTrainingJob"], sagemaker.operation_model("CreateTrainingJob").input_shape)
    assert not report.has_errors(), report.generate_report()
    schedule = rendered["CreateSchedule"]
    report = validator.validate(schedule, scheduler.operation_model("CreateSchedule").input_shape)
    assert not report.has_errors(), report.generate_report()
    target = json.loads(schedule["Target"]["Input"])
    filled = {**target, "TrainingJobName": target["TrainingJobName"].replace("<aws.scheduler.execution-id>", "0" * 36)}
    report = validator.validate(filled, sagemaker.operation_model("CreateTrainingJob").input_shape)
    assert not report.has_errors(), report.generate_report()
    assert len(filled["TrainingJobName"]) <= 63
    assert json.loads(target["HyperParameters"]["stage"]) == "pipeline"
    assert target["HyperParameters"]["scheduled_time"] == json.dumps("<aws.scheduler.scheduled-time>")
    assert schedule["ScheduleExpression"] == "cron(0 2 * * ? *)"


def test_bad_render_input(tmp_path):
    local = tmp_path / "local.yaml"
    local.write_text(EXAMPLE.read_text().replace("s3://my-distill-bucket/pipelines/support-assistant", "/srv/store"))
    code, out = _render("--target", "cronjob", spec=local)
    assert code == 2 and "store: '/srv/store': in Kubernetes a folder must be under /data" in out
    code, out = _render("--target", "sagemaker", "--image", "x")
    assert code == 2 and "--role-arn: required with --target sagemaker" in out
    code, out = _render("--target", "argo", "--shards", "0")
    assert code == 2 and "--shards: must be >= 1" in out


def test_eventbridge_cron():
    from distill.config import ConfigError
    from distill.pipeline.render import eventbridge_cron

    assert eventbridge_cron("0 2 * * *") == "cron(0 2 * * ? *)"
    assert eventbridge_cron("30 4 * * 1-5") == "cron(30 4 ? * 2-6 *)"
    assert eventbridge_cron("0 0 1 * *") == "cron(0 0 1 * ? *)"
    assert eventbridge_cron("0 6 * * 0") == "cron(0 6 ? * 1 *)"
    with pytest.raises(ConfigError):
        eventbridge_cron("0 0 1 * 1")


def main_render() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    import os

    os.chdir(REPO)
    for name, args in CASES.items():
        code, out = _render(*args)
        if code != 0:
            raise SystemExit(out)
        (GOLDEN / name).write_text(out)
        print(f"wrote {GOLDEN / name}")


if __name__ == "__main__":
    sys.exit(main_render())


def test_object_storage_only_mounts_no_volume_claim(tmp_path):
    s3_only = tmp_path / "s3.yaml"
    text = EXAMPLE.read_text().replace("/data/teachers/qwen2.5-72b-endpoint.yaml", "qwen2.5-72b-instruct")
    s3_only.write_text(text.replace("/data/suites/support.jsonl", "s3-suite-name"))
    for target in ("cronjob", "argo"):
        code, out = _render("--target", target, spec=s3_only)
        assert code == 0, out
        assert "persistentVolumeClaim" not in out and "/data" not in out
        for doc in documents(out):
            validate(doc, EKS_VERSIONS[-1])
    code, out = _render("--target", "cronjob")
    assert "claimName: distill-data" in out  # the example's teacher recipe and suite live on /data
