"""`distill pipeline`: scheduled re-distillation as one idempotent command any scheduler can call.

    spec.py      the pipeline spec (YAML): sources, the stage sections, the gate, promotion
    store.py     the store (a folder or s3://...), its lock (flock; conditional writes on S3)
    index.py     exact keys and MinHash signatures of every prompt already answered, on disk
    run.py       `pipeline run`: the stages, their content keys, the ledger commit
    registry.py  where a promoted student is published: the ledger, MLflow
    status.py    `pipeline status`, `promote`, `rollback`
    render.py    `pipeline render`: CronJob, Argo CronWorkflow, SageMaker job + EventBridge schedule

docs/pipeline.md is the user's guide; the exit codes are distill/errors.py's.
"""
