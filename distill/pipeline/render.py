"""`distill pipeline render SPEC --target cronjob|argo|sagemaker`: the scheduler's definition of a
pipeline, printed for the user to commit and own.

- ``cronjob``: a ConfigMap holding the spec and a Kubernetes CronJob running ``pipeline run`` in the
  image: one run at a time (``concurrencyPolicy: Forbid``), a start deadline, the store's
  credentials from a Secret, and a ``podFailurePolicy`` that acts on distill's exit codes.
- ``argo``: the ConfigMap and an Argo CronWorkflow that spreads a run over pods: prepare (collect,
  augment), N generate workers at once, the merge, training as a Kubeflow PyTorchJob across nodes,
  and the finish (eval, gate, promotion); every step passes the schedule's time, so every pod
  works on the same run id, and a retried step resumes.
- ``sagemaker``: a CreateTrainingJob request running ``pipeline run`` in the image (the spec as the
  ``config`` channel, the work folder in the synced checkpoint folder so a spot restart resumes),
  and an EventBridge Scheduler CreateSchedule request whose universal target starts that job on
  the schedule, with the schedule's time as the run's.

Storage: folder stores and sources must sit on the shared ``/data`` volume in Kubernetes (the
distill-data ReadWriteMany PVC of deploy/kubernetes), mounted only when a path of the spec is
there; with an ``s3://`` store and sources (object storage through the store URL) the pods mount
no PersistentVolumeClaim, only scratch space.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill.config import ConfigError
from distill.pipeline.spec import PipelineSpec, load_spec

TARGETS = ("cronjob", "argo", "sagemaker")
SPEC_DIR = "/etc/distill/pipeline"
DATA_MOUNT = "/data"
# what the CronJob's podFailurePolicy does with each exit code (the rest: a counted retry)
FAIL_JOB_CODES = [2, 3]  # bad spec: the same input fails the same way; gate failed: a verdict, alert
IGNORE_CODES = [75]  # stopped at a safe point (eviction, drain): resumable, not the run's fault
# what Argo retries: crashes, lock held, a stage failed, storage refused, stopped (all resume)
RETRY_EXPRESSION = "asInt(lastRetry.exitCode) in [1, 6, 8, 74, 75]"


@dataclass(frozen=True)
class RenderOptions:
    image: str | None = None
    schedule: str = "0 2 * * *"
    timezone: str = "Etc/UTC"
    namespace: str = "distill"
    gpus: int = 8
    nodes: int = 2
    shards: int = 4
    data_pvc: str = "distill-data"
    secret: str = "distill-store"
    role_arn: str | None = None
    scheduler_role_arn: str | None = None
    s3_prefix: str | None = None
    instance_type: str = "ml.p4d.24xlarge"
    volume_gb: int = 500
    max_runtime_h: int = 48


def _name(spec: PipelineSpec) -> str:
    return "distill-pipeline-" + re.sub(r"[^a-z0-9-]", "-", spec.name.lower()).strip("-")[:40]


def _check_paths(spec: PipelineSpec, spec_path: str) -> None:
    """Folder stores and sources must be on the shared /data volume the pods mount."""
    for where, value in [("store", spec.store)] + [(f"sources.{i}.path", s.path) for i, s in enumerate(spec.sources)]:
        if "://" in value:
            continue
        if not (value == DATA_MOUNT or value.startswith(DATA_MOUNT + "/")):
            raise ConfigError(f"{spec_path}: {where}: {value!r}: in Kubernetes a folder must be under {DATA_MOUNT} "
                              "(the distill-data volume every pod mounts), or use s3://")


def _config_map(spec: PipelineSpec, spec_path: str, options: RenderOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": _name(spec), "namespace": options.namespace,
                         "labels": {"app.kubernetes.io/name": "distill", "app.kubernetes.io/component": "pipeline"}},
            "data": {"pipeline.yaml": Path(spec_path).read_text(encoding="utf-8")}}


def _security() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 0, "fsGroup": 10001,
           "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def uses_data_volume(spec: PipelineSpec) -> bool:
    """Whether a path of the spec lives on the shared /data volume; without one (an s3:// store and
    sources, shipped or hub models) the pods mount no PersistentVolumeClaim at all."""
    paths = [spec.store, spec.teacher, spec.student, str(spec.eval.get("suite", ""))] + [s.path for s in spec.sources]
    return any(p == DATA_MOUNT or str(p).startswith(DATA_MOUNT + "/") for p in paths)


def _volumes(spec: PipelineSpec, options: RenderOptions) -> list[dict[str, Any]]:
    volumes = [{"name": "spec", "configMap": {"name": _name(spec)}}]
    if uses_data_volume(spec):
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": options.data_pvc}})
    return volumes + [
        {"name": "work", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]


def _mounts(spec: PipelineSpec) -> list[dict[str, Any]]:
    mounts = [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}]
    if uses_data_volume(spec):
        mounts.append({"name": "data", "mountPath": DATA_MOUNT})
    return mounts + [{"name": "work", "mountPath": "/work"}, {"name": "home", "mountPath": "/home/distill"},
                     {"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]


def _container(spec: PipelineSpec, options: RenderOptions, args: list[str], gpus: int, name: str = "distill") -> dict[str, Any]:
    _, security = _security()
    resources: dict[str, Any] = {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "128Gi"}}
    if gpus:
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    return {
        "name": name, "image": options.image or "distill-gpu", "args": args,
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                {"name": "DISTILL_PIPELINE_WORK", "value": "/work/pipeline"}],
        # the store's credentials: AWS_* keys from this Secret; or leave it out and use IRSA / Pod Identity
        "envFrom": [{"secretRef": {"name": options.secret, "optional": True}}],
        "resources": resources, "securityContext": security, "volumeMounts": _mounts(spec),
    }


def _run_args(*extra: str) -> list[str]:
    return ["pipeline", "run", f"{SPEC_DIR}/pipeline.yaml", *extra]


def cronjob(spec: PipelineSpec, spec_path: str, options: RenderOptions) -> list[dict[str, Any]]:
    _check_paths(spec, spec_path)
    pod_security, _ = _security()
    container = _container(spec, options, _run_args("--nothing-new-ok"), options.gpus)
    job = {
        "backoffLimit": 6,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "distill", "operator": "In", "values": FAIL_JOB_CODES}},
            {"action": "Ignore", "onExitCodes": {"containerName": "distill", "operator": "In", "values": IGNORE_CODES}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "distill", "app.kubernetes.io/component": "pipeline"}},
            "spec": {"restartPolicy": "Never", "serviceAccountName": "distill", "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 180, "securityContext": pod_security,
                     "containers": [container], "volumes": _volumes(spec, options)},
        },
    }
    cron = {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": _name(spec), "namespace": options.namespace,
                         "labels": {"app.kubernetes.io/name": "distill", "app.kubernetes.io/component": "pipeline"}},
            "spec": {"schedule": options.schedule, "timeZone": options.timezone, "concurrencyPolicy": "Forbid",
                     "startingDeadlineSeconds": 3600, "successfulJobsHistoryLimit": 7, "failedJobsHistoryLimit": 7,
                     "jobTemplate": {"spec": job}}}
    return [_config_map(spec, spec_path, options), cron]


def _pytorchjob(spec: PipelineSpec, options: RenderOptions) -> dict[str, Any]:
    pod_security, _ = _security()
    container = _container(spec, options, [
        "--shutdown_timeout=150", "-m", "distill", *_run_args("--scheduled-time", "{{workflow.scheduledTime}}",
                                                              "--only", "train")], options.gpus, name="pytorch")
    container["command"] = ["/usr/bin/tini", "--", "torchrun"]  # torchrun takes its rendezvous from PET_*
    pod = {"metadata": {"labels": {"app.kubernetes.io/name": "distill", "app.kubernetes.io/component": "pipeline-train"}},
           "spec": {"serviceAccountName": "distill", "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 180, "securityContext": pod_security,
                    "containers": [container], "volumes": _volumes(spec, options)}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if options.nodes > 1:
        replicas["Worker"] = {"replicas": options.nodes - 1, "restartPolicy": "OnFailure", "template": pod}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"generateName": _name(spec) + "-train-", "namespace": options.namespace},
            "spec": {"nprocPerNode": str(options.gpus), "runPolicy": {"backoffLimit": 20, "cleanPodPolicy": "None"},
                     "pytorchReplicaSpecs": replicas}}


def argo(spec: PipelineSpec, spec_path: str, options: RenderOptions) -> list[dict[str, Any]]:
    _check_paths(spec, spec_path)
    pod_security, _ = _security()
    when = "'{{steps.prepare.outputs.parameters.outcome}}' == 'prepared'"
    scheduled = ["--scheduled-time", "{{workflow.scheduledTime}}"]
    retry = {"limit": 3, "expression": RETRY_EXPRESSION, "backoff": {"duration": "1m", "factor": 2}}

    def step_template(name: str, args: list[str], gpus: int, **extra: Any) -> dict[str, Any]:
        return {"name": name, "retryStrategy": retry, "container": _container(spec, options, args, gpus), **extra}

    templates = [
        {"name": "run", "steps": [
            [{"name": "prepare", "template": "prepare"}],
            [{"name": "generate", "template": "generate-shard", "when": when, "withSequence": {"count": str(options.shards)},
              "arguments": {"parameters": [{"name": "shard", "value": "{{item}}"}]}}],
            [{"name": "merge", "template": "merge", "when": when}],
            [{"name": "train", "template": "train", "when": when}],
            [{"name": "finish", "template": "finish", "when": when}],
        ]},
        step_template("prepare", _run_args(*scheduled, "--only", "prepare", "--nothing-new-ok", "--outcome-file",
                                           "/tmp/outcome"), 0,
                      outputs={"parameters": [{"name": "outcome", "valueFrom": {"path": "/tmp/outcome"}}]}),
        step_template("generate-shard", _run_args(*scheduled, "--only", "generate", "--shard",
                                                  f"{{{{inputs.parameters.shard}}}}/{options.shards}"), options.gpus,
                      inputs={"parameters": [{"name": "shard"}]}),
        step_template("merge", _run_args(*scheduled, "--only", "generate"), 0),
        {"name": "train", "resource": {
            "action": "create", "setOwnerReference": True,
            "successCondition": "status.replicaStatuses.Master.succeeded > 0",
            "failureCondition": "status.replicaStatuses.Master.failed > 0",
            "manifest": _dump(_pytorchjob(spec, options))}},
        step_template("finish", _run_args(*scheduled), 1),
    ]
    workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow",
                "metadata": {"name": _name(spec), "namespace": options.namespace,
                             "labels": {"app.kubernetes.io/name": "distill", "app.kubernetes.io/component": "pipeline"}},
                "spec": {"schedules": [options.schedule], "timezone": options.timezone, "concurrencyPolicy": "Forbid",
                         "startingDeadlineSeconds": 3600, "successfulJobsHistoryLimit": 7, "failedJobsHistoryLimit": 7,
                         "workflowSpec": {"entrypoint": "run", "serviceAccountName": "distill",
                                          "securityContext": pod_security, "volumes": _volumes(spec, options),
                                          "templates": templates}}}
    return [_config_map(spec, spec_path, options), workflow]


def eventbridge_cron(schedule: str) -> str:
    """A 5-field cron (minute hour day month weekday, weekday 0-6 from Sunday) as EventBridge's
    ``cron(minute hour day month weekday year)``, weekday 1-7 from Sunday, one of day/weekday '?'."""
    fields = schedule.split()
    if len(fields) != 5:
        raise ConfigError(f"--schedule: {schedule!r}: five fields (minute hour day month weekday)")
    minute, hour, day, month, weekday = fields
    if weekday != "*":
        weekday = re.sub(r"\d+", lambda m: str(int(m.group()) % 7 + 1), weekday)
        if day != "*":
            raise ConfigError(f"--schedule: {schedule!r}: EventBridge cannot take both a day of month and a weekday")
        day = "?"
    else:
        weekday = "?"
    return f"cron({minute} {hour} {day} {month} {weekday} *)"


def sagemaker(spec: PipelineSpec, spec_path: str, options: RenderOptions) -> dict[str, Any]:
    for flag, value in (("--image", options.image), ("--role-arn", options.role_arn), ("--s3-prefix", options.s3_prefix)):
        if not value:
            raise ConfigError(f"{flag}: required with --target sagemaker")
    prefix = str(options.s3_prefix).rstrip("/")
    if not prefix.startswith("s3://"):
        raise ConfigError(f"--s3-prefix: an s3:// URI, got {prefix!r}")
    if "://" not in spec.store:
        raise ConfigError(f"{spec_path}: store: {spec.store!r}: a SageMaker job's disk is gone when it ends; use s3://")
    short = re.sub(r"[^A-Za-z0-9-]", "-", spec.name)[:18].strip("-")  # + an execution id: <= 63 characters

    def request(job_name: str, scheduled: str | None) -> dict[str, Any]:
        hyper = {"stage": json.dumps("pipeline"), "nothing_new_ok": json.dumps(True)}
        if scheduled:
            hyper["scheduled_time"] = json.dumps(scheduled)
        return {
            "TrainingJobName": job_name,
            "AlgorithmSpecification": {"TrainingImage": options.image, "TrainingInputMode": "File",
                                       "MetricDefinitions": [{"Name": "eval:score", "Regex": r"metric: model=challenger score=([-+0-9.eE]+)"}]},
            "RoleArn": options.role_arn,
            "HyperParameters": hyper,
            "InputDataConfig": [{"ChannelName": "config", "InputMode": "File", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"{prefix}/config/", "S3DataDistributionType": "FullyReplicated"}}}],
            "OutputDataConfig": {"S3OutputPath": f"{prefix}/output/"},
            "CheckpointConfig": {"S3Uri": f"{prefix}/checkpoints/", "LocalPath": "/opt/ml/checkpoints"},
            "ResourceConfig": {"InstanceType": options.instance_type, "InstanceCount": 1, "VolumeSizeInGB": options.volume_gb},
            "StoppingCondition": {"MaxRuntimeInSeconds": options.max_runtime_h * 3600},
            "Tags": [{"Key": "distill-pipeline", "Value": spec.name}],
        }

    schedule = {
        "Name": _name(spec)[:64],
        "ScheduleExpression": eventbridge_cron(options.schedule),
        "ScheduleExpressionTimezone": options.timezone.removeprefix("Etc/"),
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Target": {
            "Arn": "arn:aws:scheduler:::aws-sdk:sagemaker:createTrainingJob",
            "RoleArn": options.scheduler_role_arn or options.role_arn,
            # the scheduler fills in its execution id (a unique job name) and the scheduled time
            # (the run id: a retried invocation resumes the same run)
            "Input": json.dumps(request(f"distill-{short}-<aws.scheduler.execution-id>", "<aws.scheduler.scheduled-time>")),
            "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
        },
    }
    return {"UploadSpec": {"From": spec_path, "To": f"{prefix}/config/pipeline.yaml"},
            "CreateTrainingJob": request(f"distill-{short}-manual", None), "CreateSchedule": schedule}


def render(spec_path: str, target: str, options: RenderOptions) -> str:
    if target not in TARGETS:
        raise ConfigError(f"--target: one of {', '.join(TARGETS)}, got {target!r}")
    spec = load_spec(spec_path)
    header = (f"# distill pipeline render {Path(spec_path).name} --target {target}: the definition of pipeline "
              f"{spec.name!r} for you to commit and own\n# (docs/pipeline.md). Regenerate it when the spec changes.\n")
    if target == "sagemaker":
        return json.dumps(sagemaker(spec, spec_path, options), indent=2) + "\n"
    docs = cronjob(spec, spec_path, options) if target == "cronjob" else argo(spec, spec_path, options)
    return header + "---\n".join(_dump(d) for d in docs)


class _PlainDumper(yaml.SafeDumper):
    """No &anchors / *aliases: a definition people read and edit spells every value out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False, width=120)
