"""Helpers for training tests: a peaked tiny teacher, its sampled rows, corpora written with
CorpusWriter, CLI arguments and runs (the session fixtures built from them live in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WORDS = ("what is the sum of and write a short poem about sea wind at night explain why sky blue "
         "list three prime numbers translate good morning quick brown fox jumps over lazy dog river "
         "how many minutes are there in hours give me recipe for simple tomato soup with basil garlic").split()


def make_peaked_teacher(out_dir, tokenizer_dir, seed=1, sharpness=6.0):
    """A tiny random Qwen2 whose output distribution is sharp (final norm scaled), so there is
    something to distill: a random init alone gives near-uniform, nearly uninformative logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.tiny import make_model_dir

    path = make_model_dir(out_dir, tokenizer_dir=tokenizer_dir, seed=seed, hidden_size=64, num_layers=2)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.mul_(sharpness)
    model.save_pretrained(path)
    return path


def write_corpus(out_dir, rows, tokenizer, top_k, row_group_size=16, num_shards=1, identity_extra=None, **writer_kwargs):
    from distill.corpus import CorpusWriter
    from distill.fingerprint import tokenizer_fingerprint

    identity = {"tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "teacher": {"model": "tiny"},
                **(identity_extra or {})}
    writer = CorpusWriter(out_dir, identity=identity, num_shards=num_shards, top_k=top_k, row_group_size=row_group_size,
                          **writer_kwargs)
    writer.start()
    per = -(-len(rows) // num_shards)
    for index in writer.my_shards():
        writer.write_shard(index, rows[index * per:(index + 1) * per])
    writer.finish()
    return Path(out_dir)


def teacher_rows(teacher_dir, num_prompts, max_new_tokens=24, top_k=8, seed=0, black_box=False):
    """Sample responses from the teacher (temperature 1) and record its raw top-k log-probs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.corpus import CorpusRow
    from distill.prompts import encode_prompt

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(num_prompts)]
    messages = [[{"role": "user", "content": t}] for t in texts]
    prompts = [np.asarray(encode_prompt(tok, m), dtype=np.int32) for m in messages]
    width = max(len(p) for p in prompts)
    # Left-padded batch, all prompts sampled together (one forward per generated token).
    ids = torch.full((num_prompts, width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.from_numpy(p.astype(np.int64))
        mask[i, width - len(p):] = 1
    steps_ids, steps_top_ids, steps_top_lps, steps_sampled = [], [], [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            logprobs = torch.log_softmax(logits, -1)
            nxt = torch.multinomial(logprobs.exp(), 1, generator=gen)[:, 0]
            top = logprobs.topk(top_k, dim=-1)
            steps_ids.append(nxt)
            steps_top_ids.append(top.indices)
            steps_top_lps.append(top.values)
            steps_sampled.append(logprobs.gather(1, nxt[:, None])[:, 0])
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], 1)
    resp_all = torch.stack(steps_ids, 1).numpy()
    top_ids_all = torch.stack(steps_top_ids, 1).numpy()
    top_lps_all = torch.stack(steps_top_lps, 1).numpy()
    sampled_all = torch.stack(steps_sampled, 1).numpy()
    rows = []
    for i in range(num_prompts):
        stop = np.nonzero(resp_all[i] == eos)[0]
        t = int(stop[0]) + 1 if len(stop) else max_new_tokens
        resp = resp_all[i, :t].astype(np.int32)
        rows.append(CorpusRow(
            id=f"row-{seed}-{i}", prompt_ids=prompts[i], response_ids=resp,
            topk_ids=None if black_box else top_ids_all[i, :t].astype(np.int32),
            topk_logprobs=None if black_box else top_lps_all[i, :t].astype(np.float32),
            sampled_logprobs=None if black_box else sampled_all[i, :t].astype(np.float32),
            finish_reason="stop" if len(stop) else "length", prompt_text=texts[i],
            response_text=tok.decode(resp), messages=messages[i], prompt_id=f"p{i}",
        ))
    return rows


def train_args(student, corpus, out, **extra):
    """CLI args for a small, fast, deterministic run."""
    args = ["train", "--student", str(student), "--corpus", str(corpus), "--out", str(out),
            "--tokens-per-batch", "256", "--max-seq-len", "64", "--lr", "1e-3", "--seed", "0"]
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


def run_cli(args, *, launcher=None, nproc=1, env_extra=None, timeout=240, check=True):
    """Run `python -m distill ...` in a subprocess: under torchrun with nproc > 1, or under
    ``launcher`` (the command line up to and including ``-m distill``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), **(env_extra or {})}
    if launcher is not None:
        cmd = [*launcher, *args]
    elif nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), "-m", "distill", *args]
    else:
        cmd = [sys.executable, "-m", "distill", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    from tests.conftest import check_cli_failure

    check_cli_failure(proc.returncode, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(out):
    import json

    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]
