"""Where promoted students are published: the store's ledger (always) and, optionally, MLflow.

One small interface, two registries:

- ``store`` (the default): ``ledger.json`` in the store holds every version (its lineage), the
  alias (``champion``) and the previous champions kept for rollback. Nothing else to run.
- ``mlflow``: the same, mirrored to an MLflow tracking server: a registered model named after the
  pipeline, one model version per promoted run (its source: the student's files, logged as the
  run's ``student`` artifacts, so ``models:/NAME@champion`` downloads it from MLflow alone; tags:
  the run id and the weights fingerprint), the alias set on it, and one MLflow run per version
  carrying the lineage as params, the eval scores as metrics, the eval report and the lineage as
  artifacts.

Every MLflow step is idempotent (looked up by the run id tag first), so a run that dies between
publishing and committing the ledger publishes nothing twice when it is rerun. The ledger is the
pipeline's truth; ``distill pipeline promote`` and ``rollback`` move the alias in both.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, DistillError, ExitCode
from distill.pipeline.spec import PipelineSpec
from distill.pipeline.store import Store


class RegistryError(DistillError):
    """The model registry cannot be reached or refused a change."""

    exit_code = ExitCode.IO_ERROR


class MlflowRegistry:
    def __init__(self, spec: PipelineSpec) -> None:
        try:
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("promotion.registry: mlflow needs the mlflow package (pip install 'distill[mlflow]')") from None
        uri = spec.promotion.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError("promotion.mlflow_tracking_uri: required with registry: mlflow (or set $MLFLOW_TRACKING_URI)")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.name = spec.promotion.mlflow_model_name or spec.name
        self.alias = spec.promotion.alias
        self.experiment = spec.name

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors
            raise RegistryError(f"MLflow {self.uri}: {what} failed: {' '.join(str(exc).split())[:300]}") from None

    def _version_of(self, run_id: str) -> str | None:
        found = self._call("searching model versions", self.client.search_model_versions,
                           f"name = '{self.name}' and tags.distill_run = '{run_id}'")
        return found[0].version if found else None

    def publish(self, store: Store, run_id: str, lineage: dict[str, Any], report_key: str) -> str:
        has_model = self._has_model()
        version = self._version_of(run_id) if has_model else None
        if version is not None:
            return version
        if not has_model:
            self._call("creating the registered model", self.client.create_registered_model, self.name,
                       description=f"students of distill pipeline {self.experiment}")
        experiment = self._call("reading the experiment", self.client.get_experiment_by_name, self.experiment)
        experiment_id = experiment.experiment_id if experiment else self._call(
            "creating the experiment", self.client.create_experiment, self.experiment)
        runs = self._call("searching runs", self.client.search_runs, [experiment_id],
                          f"tags.distill_run = '{run_id}'")
        if runs:
            mlflow_run = runs[0]
        else:
            mlflow_run = self._call("creating a run", self.client.create_run, experiment_id,
                                    tags={"distill_run": run_id, "mlflow.runName": run_id})
            rid = mlflow_run.info.run_id
            params = {"run": run_id, "student": lineage["student"], "weights_fingerprint": lineage["weights_fingerprint"],
                      "train_config_sha256": lineage["train_config_sha256"], "train_on": lineage["prompt_window"]["train_on"],
                      "start": json.dumps(lineage["start"]), "teacher": json.dumps(lineage["teacher"], sort_keys=True)[:500],
                      "eval_report_sha256": lineage["eval_report_sha256"], "distill": lineage["code"]["distill"]}
            for key, value in params.items():
                self._call("logging params", self.client.log_param, rid, key, str(value)[:500])
            for model, scores in lineage["scores"].items():
                for metric, value in scores.items():
                    if isinstance(value, (int, float)):
                        self._call("logging metrics", self.client.log_metric, rid, f"{model}.{metric}", float(value))
            with tempfile.TemporaryDirectory() as tmp:
                report = store.pull(report_key.rsplit("/", 1)[0]) / "report.json"
                (Path(tmp) / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
                self._call("logging the eval report", self.client.log_artifact, rid, str(report), "eval")
                self._call("logging the lineage", self.client.log_artifact, rid, str(Path(tmp) / "lineage.json"))
            # the student itself, so `models:/NAME@champion` downloads it from MLflow alone
            student = store.pull(lineage["student"])
            self._call("logging the student", self.client.log_artifacts, rid, str(student), "student")
            self._call("finishing the run", self.client.set_terminated, rid)
            mlflow_run = self._call("reading the run", self.client.get_run, rid)
        source = f"{mlflow_run.info.artifact_uri.rstrip('/')}/student"
        created = self._call("creating the model version", self.client.create_model_version, self.name, source,
                             run_id=mlflow_run.info.run_id, tags={"distill_run": run_id,
                                                                  "weights_fingerprint": lineage["weights_fingerprint"]})
        return created.version

    def _has_model(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
            return True
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
                return False
            raise RegistryError(f"MLflow {self.uri}: reading model {self.name} failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise RegistryError(f"MLflow {self.uri}: reading model {self.name} failed: {' '.join(str(exc).split())[:300]}") from None

    def set_alias(self, run_id: str) -> None:
        version = self._version_of(run_id)
        if version is None:
            raise RegistryError(f"MLflow {self.uri}: model {self.name} has no version for run {run_id}")
        self._call("setting the alias", self.client.set_registered_model_alias, self.name, self.alias, version)


def registry_for(spec: PipelineSpec) -> MlflowRegistry | None:
    return MlflowRegistry(spec) if spec.promotion.registry == "mlflow" else None


def publish(spec: PipelineSpec, store: Store, run_id: str, lineage: dict[str, Any], report_key: str) -> None:
    """Publish a promoted run's student to the external registry (the ledger is written by the caller)."""
    registry = registry_for(spec)
    if registry is not None:
        registry.publish(store, run_id, lineage, report_key)
        registry.set_alias(run_id)
