"""The KL that `distill eval` gates on is the KL training reports: one implementation, one number."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from tests.train.conftest import train_args


def test_eval_kl_equals_the_trainers_held_out_kl(tiny_student_dir, kd_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.cli import main
    from distill.corpus import open_corpus
    from distill.eval.generation import Generation
    from distill.eval.kl import TeacherRef, kl_to_teacher
    from distill.train.data import RowReader, holdout_rows

    out = tmp_path / "student"
    args = train_args(tiny_student_dir, kd_corpus, out, max_steps=6, eval_rows=16, precision="fp32", max_seq_len=256,
                      tokens_per_batch=1024)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trainer_kl = [r for r in records if "eval_kl" in r][-1]

    corpus = open_corpus([str(kd_corpus)])
    held_out = holdout_rows(corpus.row_group_offsets, corpus.num_rows, 16, 0)
    reader = RowReader(corpus)
    rows = [reader.row(int(i)) for i in held_out]
    generations = [Generation(prompt_ids=r.prompt_ids.tolist(), response_ids=r.response_ids.tolist(), text="",
                              topk_ids=r.topk_ids, topk_logprobs=r.topk_logprobs) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    kl, tokens = kl_to_teacher(model, TeacherRef("teacher", [], None, generations), batch_size=5)
    assert tokens == trainer_kl["eval_tokens"] == int(sum(len(r.response_ids) for r in rows))
    assert np.isclose(kl, trainer_kl["eval_kl"], rtol=1e-5, atol=1e-7), (kl, trainer_kl["eval_kl"])
    assert kl > 0
