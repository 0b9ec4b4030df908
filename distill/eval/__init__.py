"""`distill eval`: score models on a suite, compare them with the teacher, time them, gate.

For every ``--model NAME=PATH`` (one at a time, so one model that fails to load never loses the
others' results) the suite's prompts are answered by greedy decoding, batched, with the same
``max_new_tokens`` and batch size for every model, and scored by each row's scorer
(``distill.eval.scorers``). With ``--teacher`` the report adds, per model:

- ``agreement``: the share of rows where the model's extracted answer (by the row's scorer:
  regex group, last number, normalized text) equals the teacher's greedy answer; rows where the
  teacher gave no answer are not counted.
- ``kl_to_teacher``: forward KL(teacher ‖ model) in nats per token, on the teacher's greedy
  responses to the suite prompts (held-out teacher outputs), teacher-forced through the model.
  The teacher's side is its top-``kl_top_k`` log-probs at each response position plus one tail
  bin holding the remaining mass; the model's side is its full softmax over its own vocabulary,
  folded onto the same k+1 bins. With k ≥ the vocabulary size this is the exact full-vocabulary
  KL; with a smaller k it is a lower bound (merging bins never increases a KL). Teacher ids
  beyond the model's vocabulary fall into the tail bin. Models whose tokenizer differs from the
  teacher's get no KL (token-level KL across tokenizers is meaningless).

Speed is measured after every model is scored, on the first ``speed_prompts`` suite prompts
after one excluded warm-up call: at batch 1 (``tokens_per_s``, ``latency_p50_ms``,
``latency_p95_ms``) and in full batches of ``batch_size`` (the same names with ``_batch``; the
timed prompts repeat to fill a batch). The models take turns over ``speed_rounds`` rounds and
tokens/s is the median over rounds, so the ratios between models survive a noisy machine. Tokens are generated tokens up to and including EOS; padding
after EOS in a batch is not counted. ``params`` counts unique parameters (tied embeddings once).

The score is the mean row score with a 95% confidence interval: Wilson's interval when every row
score is 0 or 1, else a percentile bootstrap (2,000 resamples, fixed seed).

Exit codes (see ``exit_code``): 0 all good; 3 the ``--gate`` expression is false (or names a
value that is unavailable); 4 a model failed to evaluate (its failure is in the report); 2 (from
the CLI) bad input found before any model ran: suite, gate, model spec.

The package, by concern:

    config.py      EvalConfig (every field an option) and the --model NAME=PATH specs
    scorers.py     suites and scorers (exact, regex, numeric, contains, python, judge)
    models.py      resolving and opening a model: HF in-process or a Teacher backend
    generation.py  greedy decoding (with the teacher's top-k captured) and timing
    kl.py          KL to the teacher, with the training loss's own functions
    stats.py       confidence intervals
    gate.py        the --gate expression
    report.py      report.json, report.md, report.png, outputs/
    runner.py      run(config): every model in turn, speed rounds, the gate
"""

from __future__ import annotations

from distill.eval.config import EvalConfig
from distill.eval.runner import (
    EXIT_GATE_FAILED,
    EXIT_MODEL_FAILED,
    EXIT_OK,
    exit_code,
    run,
)

__all__ = ["EXIT_GATE_FAILED", "EXIT_MODEL_FAILED", "EXIT_OK", "EvalConfig", "exit_code", "run"]
