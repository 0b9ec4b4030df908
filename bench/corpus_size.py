"""Corpus size per response token at k=20 with a 151,936-entry vocabulary, and the KL error of
the stored (quantized) log-probs.

Two sources of top-k rows, each >= 100k response tokens:
  random   a random-init Qwen2 (vocab 151936) sampled through distill's HF capture path. Its
           top-k ids are uniform over the vocabulary: the WORST case for id compression.
  synthetic a "trained-like" distribution (Zipf prior over ids, a dominant token, a tail):
           peaked log-probs (large deltas) and frequent low ids, as a trained model writes them.
For each: bytes per token of several encodings of the top-k block, the full corpus as
CorpusWriter writes it (all columns), and the forward KL(teacher || student) over the k+1
bins (top-k + tail, DESIGN §4) from exact vs stored log-probs, against a student distribution.

    python bench/corpus_size.py [--tokens 100000] [--out bench/corpus_size.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 151936
K = 20


def random_model_rows(num_tokens: int, batch: int, new_tokens: int, kl_tokens: int, seed: int = 0):
    """Sample from a random vocab-151936 Qwen2 via distill's capture; also returns student log-probs."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from distill.teachers.base import SamplingParams
    from distill.teachers.hf import generate_batch

    def model(hidden: int, model_seed: int):
        torch.manual_seed(model_seed)
        cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
        m = Qwen2ForCausalLM(cfg).eval()
        m.generation_config = GenerationConfig(eos_token_id=[VOCAB - 1], pad_token_id=VOCAB - 1)
        return m

    teacher, student = model(64, seed), model(32, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    rows, student_rows = [], []
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, top_k_logprobs=K)
    total, start = 0, time.time()
    while total < num_tokens:
        prompts = [torch.randint(0, VOCAB - 1, (int(torch.randint(16, 48, (1,), generator=gen)),), generator=gen).tolist()
                   for _ in range(batch)]
        out = generate_batch(teacher, None, prompts, [len(rows) + i for i in range(batch)], params,
                             eos_ids=[VOCAB - 1], pad_id=VOCAB - 1)
        for prompt, row in zip(prompts, out):
            if total < kl_tokens:  # the student's log-probs at the teacher's top-k ids, for the KL check
                full = torch.tensor([prompt + row["response_ids"].tolist()])
                with torch.inference_mode():
                    logits = student(full).logits[0, len(prompt) - 1:-1].float()
                logq = torch.log_softmax(logits, -1)
                ids = torch.from_numpy(row["topk_ids"]).long()
                student_rows.append(logq.gather(1, ids).numpy())
            rows.append((prompt, row))
            total += len(row["response_ids"])
        print(f"  random model: {total} tokens, {time.time() - start:.0f} s", flush=True)
    return rows, student_rows


def synthetic_rows(num_tokens: int, seq_len: int = 256, seed: int = 0):
    """Trained-like top-k: candidates drawn from a Zipf prior over ids, one dominant token, a tail."""
    rng = np.random.default_rng(seed)
    rows, student = [], []
    ranks = np.arange(1, VOCAB + 1)
    prior = 1.0 / ranks ** 1.1
    prior /= prior.sum()
    cdf = np.cumsum(prior)
    total = 0
    while total < num_tokens:
        n = seq_len
        topk_ids = np.zeros((n, K), np.int32)
        topk_lp = np.zeros((n, K), np.float32)
        student_lp = np.zeros((n, K), np.float32)
        response = np.zeros(n, np.int32)
        sampled = np.zeros(n, np.float32)
        for t in range(n):
            cand = np.unique(np.minimum(np.searchsorted(cdf, rng.random(96)), VOCAB - 1))[:64]
            z = rng.normal(0, 2.0, cand.size)
            z[rng.integers(cand.size)] += rng.uniform(2, 12)  # the "right" next token
            tail = rng.uniform(0.001, 0.05)  # mass on the remaining ~152k tokens
            p = np.exp(z - z.max())
            p = p / p.sum() * (1 - tail)
            order = np.argsort(-p)[:K]
            topk_ids[t], topk_lp[t] = cand[order], np.log(p[order])
            q = np.exp(z + rng.normal(0, 1.0, cand.size))
            q = q / q.sum() * (1 - rng.uniform(0.001, 0.1))
            student_lp[t] = np.log(q[order])
            pick = rng.choice(cand.size, p=p / p.sum())
            response[t], sampled[t] = cand[pick], np.log(p[pick])
        prompt = np.minimum(np.searchsorted(cdf, rng.random(32)), VOCAB - 1).tolist()
        rows.append((prompt, {"response_ids": response, "topk_ids": topk_ids, "topk_logprobs": topk_lp,
                              "sampled_logprobs": sampled, "finish_reason": "length"}))
        student.append(student_lp)
        total += n
    return rows, student


def forward_kl(teacher_lp: np.ndarray, student_lp: np.ndarray) -> np.ndarray:
    """KL(p || q) per position over the k+1 bins (top-k + tail), float64."""
    p = np.exp(teacher_lp.astype(np.float64))
    q = np.exp(student_lp.astype(np.float64))
    p_tail = np.clip(1 - p.sum(-1), 0, None)
    q_tail = np.clip(1 - q.sum(-1), 1e-12, None)
    kl = (p * (teacher_lp - student_lp)).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(p_tail > 0, p_tail * (np.log(p_tail) - np.log(q_tail)), 0.0)
    return kl + tail


def parquet_bytes(columns: dict, encodings: dict | None = None, dictionary: bool = False, compression: str = "zstd") -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    buf = io.BytesIO()
    kwargs = {}
    if encodings:
        kwargs["column_encoding"] = {f"{n}.list.element" if pa.types.is_list(table[n].type) else n: e for n, e in encodings.items()}
    pq.write_table(table, buf, compression=compression, compression_level=9 if compression == "zstd" else None,
                   use_dictionary=dictionary, write_statistics=False, **kwargs)
    return len(buf.getvalue())


def lists(arrays, dtype):
    import pyarrow as pa

    offsets = np.zeros(len(arrays) + 1, np.int32)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate([a.ravel() for a in arrays]).astype(dtype)))


def pack_bits(ids: np.ndarray, bits: int) -> bytes:
    u = ids.astype(np.uint32).ravel()
    return np.packbits(((u[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8).ravel(), bitorder="little").tobytes()


def column_bytes(paths: list[str]) -> dict[str, int]:
    """Compressed bytes per top-level column over Parquet files (from their footers)."""
    import pyarrow.parquet as pq

    per_column: dict[str, int] = {}
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(g).column(c)
                key = col.path_in_schema.split(".")[0]
                per_column[key] = per_column.get(key, 0) + col.total_compressed_size
    return per_column


def measure(name: str, rows, student, lines: list[str]) -> None:
    import pyarrow as pa

    from distill.corpus import CorpusRow, CorpusWriter, open_corpus
    from distill.corpus.encoding import Grid, encode_logprobs, encode_topk_logprobs
    from tests.tiny import make_tokenizer

    num_tokens = sum(len(r["response_ids"]) for _, r in rows)
    ids = [r["topk_ids"] for _, r in rows]
    lps = [r["topk_logprobs"] for _, r in rows]
    sampled = [r["sampled_logprobs"] for _, r in rows]
    bss = "BYTE_STREAM_SPLIT"
    options = {
        "int32 ids + fp16 log-probs, no compression (the 120 B reference)": parquet_bytes(
            {"i": lists(ids, np.int32), "l": lists(lps, np.float16), "s": lists(sampled, np.float16)}, compression="none"),
        "int32 ids + fp16 log-probs, Parquet zstd (dictionary)": parquet_bytes(
            {"i": lists(ids, np.int32), "l": lists(lps, np.float16), "s": lists(sampled, np.float16)}, dictionary=True),
        "int32 ids + fp32 log-probs, BYTE_STREAM_SPLIT + zstd": parquet_bytes(
            {"i": lists(ids, np.int32), "l": lists(lps, np.float32), "s": lists(sampled, np.float32)}, {"i": bss, "l": bss, "s": bss}),
    }
    for scale in (256, 512, 1024):
        codes = [encode_topk_logprobs(lp, Grid(scale)) for lp in lps]
        scodes = [encode_logprobs(s, Grid(scale)) for s in sampled]
        options[f"int32 ids DELTA_BINARY_PACKED + delta codes 1/{scale} nat, zstd"] = parquet_bytes(
            {"i": lists(ids, np.int32), "l": lists(codes, np.int32), "s": lists(scodes, np.int32)},
            {"i": "DELTA_BINARY_PACKED", "l": bss, "s": bss})
        options[f"int32 ids + delta codes 1/{scale} nat, all BYTE_STREAM_SPLIT + zstd"] = parquet_bytes(
            {"i": lists(ids, np.int32), "l": lists(codes, np.int32), "s": lists(scodes, np.int32)}, {"i": bss, "l": bss, "s": bss})
        if scale == 512:
            packed = pa.array([pack_bits(a, 18) for a in ids], type=pa.binary())
            options[f"18-bit packed ids (binary) + delta codes 1/{scale} nat, zstd"] = parquet_bytes(
                {"i": packed, "l": lists(codes, np.int32), "s": lists(scodes, np.int32)}, {"l": bss, "s": bss})
    lines += [f"### {name}: {len(rows)} rows, {num_tokens} response tokens, k={K}", "",
              "Top-k block only (ids + k log-probs + sampled log-prob), bytes per response token:", "",
              "| encoding | B/token |", "| --- | --- |"]
    lines += [f"| {label} | {size / num_tokens:.2f} |" for label, size in options.items()]

    # KL error of the stored values
    kl_rows = len(student)  # the student's log-probs may cover only the first rows
    kl_tokens = sum(len(lp) for lp in lps[:kl_rows])
    exact_kl = np.concatenate([forward_kl(lp, s) for lp, s in zip(lps, student)])
    lines += ["", f"Forward KL(teacher || student) over k+1 bins, exact vs stored, on {kl_tokens} tokens (nats/token):", "",
              "| scale (codes/nat) | mean KL exact | mean KL stored | abs diff of means | mean abs diff per token | max abs diff |",
              "| --- | --- | --- | --- | --- | --- |"]
    from distill.corpus.encoding import decode_topk_logprobs
    for scale in (256, 512, 1024):
        stored = [decode_topk_logprobs(encode_topk_logprobs(lp, Grid(scale)), K, Grid(scale)) for lp in lps]
        stored_kl = np.concatenate([forward_kl(lp, s) for lp, s in zip(stored, student)])
        diff = np.abs(stored_kl - exact_kl)
        lines.append(f"| {scale} | {exact_kl.mean():.6f} | {stored_kl.mean():.6f} | {abs(stored_kl.mean() - exact_kl.mean()):.2e} | "
                     f"{diff.mean():.2e} | {diff.max():.2e} |")

    # the real thing: a corpus as CorpusWriter writes it, all columns
    with tempfile.TemporaryDirectory() as tmp:
        tok = make_tokenizer(os.path.join(tmp, "tok"))
        corpus_rows = []
        for i, (prompt, r) in enumerate(rows):
            text = tok.decode([int(t) % len(tok) for t in r["response_ids"]], skip_special_tokens=True)
            corpus_rows.append(CorpusRow(
                id=f"{i:024x}", prompt_ids=np.asarray(prompt, np.int32), response_ids=np.asarray(r["response_ids"], np.int32),
                topk_ids=r["topk_ids"], topk_logprobs=r["topk_logprobs"], sampled_logprobs=r["sampled_logprobs"],
                finish_reason=r["finish_reason"], prompt_text="Question %d about something" % i, response_text=text,
                messages=[{"role": "user", "content": "Question %d about something" % i}], prompt_id=f"{i:016x}",
                origin={"source": "seed", "file": "seeds.jsonl", "where": f"seeds.jsonl:{i + 1}"}))
        out = os.path.join(tmp, "corpus")
        per_shard = 256
        num_shards = -(-len(corpus_rows) // per_shard)
        writer = CorpusWriter(out, identity={"bench": name}, num_shards=num_shards, top_k=K, logprob_alpha=0.0)
        writer.start()
        for j in range(num_shards):
            writer.write_shard(j, corpus_rows[j * per_shard:(j + 1) * per_shard])
        manifest = writer.finish()
        per_column = column_bytes([os.path.join(out, shard["path"]) for shard in manifest["shards"]])
        corpus = open_corpus(out)
        back = {r.id: r for r in corpus.iter_rows()}
        worst = max(float(np.abs(back[c.id].topk_logprobs - c.topk_logprobs).max()) for c in corpus_rows)
        ids_equal = all(np.array_equal(back[c.id].topk_ids, c.topk_ids) for c in corpus_rows)
        lines += ["", f"Full corpus written by `CorpusWriter` (uniform grid as schema v1, logprob_scale {manifest['encoding']['logprob_scale']}, "
                  f"{num_shards} shards): **{manifest['bytes'] / num_tokens:.2f} bytes per response token** "
                  f"({manifest['bytes']} bytes; read back: ids identical {ids_equal}, max |log-prob error| {worst:.2e}).", "",
                  "| column | B/token |", "| --- | --- |"]
        lines += [f"| {k} | {v / num_tokens:.2f} |" for k, v in sorted(per_column.items(), key=lambda kv: -kv[1])]
        lines += [f"| (footers, page headers) | {(manifest['bytes'] - sum(per_column.values())) / num_tokens:.2f} |", ""]
    print("\n".join(lines[-12:]), flush=True)


REAL_GRIDS = [(512, 0.0), (512, 0.5), (512, 0.75), (512, 1.0), (1024, 1.0)]


def exact_rows(corpus_dir: str, teacher_dir: str):
    """The corpus's rows with their top-k log-probs recomputed by a full forward pass of the
    teacher (float32, no quantization): the exact values every grid is compared with."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    from distill.corpus import open_corpus

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    rows = []
    for row in open_corpus(corpus_dir).iter_rows():
        full = torch.tensor([list(row.prompt_ids) + list(row.response_ids)])
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(full).logits[0].float(), -1)
        start = len(row.prompt_ids) - 1
        step = logprobs[start:start + len(row.response_ids)]
        values, ids = step.topk(row.topk_ids.shape[1], dim=-1)
        sampled = step.gather(1, torch.from_numpy(row.response_ids.astype(np.int64))[:, None])[:, 0]
        rows.append(dataclasses.replace(row, topk_ids=ids.to(torch.int32).numpy(), topk_logprobs=values.numpy(),
                                        sampled_logprobs=sampled.numpy()))
    return rows


def student_logprobs(rows, student_dir: str) -> list[np.ndarray]:
    """A student's log-probs at the teacher's top-k ids, position by position."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    out = []
    for row in rows:
        full = torch.tensor([list(row.prompt_ids) + list(row.response_ids)])
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(full).logits[0].float(), -1)
        start = len(row.prompt_ids) - 1
        out.append(logprobs[start:start + len(row.response_ids)].gather(1, torch.from_numpy(row.topk_ids.astype(np.int64))).numpy())
    return out


def measure_real(corpus_dir: str, teacher_dir: str, students: dict[str, str], lines: list[str]) -> None:
    """Bytes per response token of the real teacher's corpus on each log-prob grid, and the
    forward KL error of the stored values against students of the teacher."""
    from distill.corpus import CorpusWriter, open_corpus

    rows = exact_rows(corpus_dir, teacher_dir)
    num_tokens = sum(len(r.response_ids) for r in rows)
    k = rows[0].topk_ids.shape[1]
    exact = np.concatenate([r.topk_logprobs for r in rows]).astype(np.float64)
    qs = {name: np.concatenate(student_logprobs(rows, path)).astype(np.float64) for name, path in students.items()}
    exact_kl = {name: forward_kl(exact, q) for name, q in qs.items()}
    source = json.loads((Path(corpus_dir) / "manifest.json").read_text())
    lines += [f"### Real teacher: SmolLM2-135M-Instruct (vocab 49152), its own corpus: {len(rows)} rows, {num_tokens} response tokens, k={k}", "",
              f"Corpus `distill generate` wrote from the 111 seeds of `tests/real/data/seeds.jsonl` (generation "
              f"{json.dumps(source.get('generation', {}), sort_keys=True)}). Each row's top-{k} log-probs recomputed by a full "
              "float32 forward pass (the exact values), then written by `CorpusWriter` on each grid. KL = forward "
              "KL(teacher || student) over top-k + tail, per token; students: "
              + ", ".join(f"{n} (exact mean KL {exact_kl[n].mean():.3f})" for n in students) + ".", "",
              "| grid (scale, alpha) | full corpus B/token | top-k log-prob codes B/token | top-k ids B/token | "
              + " | ".join(f"KL error vs {n}: mean abs per token / of the mean" for n in students) + " | max abs log-prob error |",
              "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in students) + " | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for scale, alpha in REAL_GRIDS:
            out = os.path.join(tmp, f"g{scale}-{alpha}")
            writer = CorpusWriter(out, identity={"bench": "real"}, num_shards=1, top_k=k, logprob_scale=scale, logprob_alpha=alpha)
            writer.start()
            writer.write_shard(0, rows)
            manifest = writer.finish()
            per_column = column_bytes([os.path.join(out, manifest["shards"][0]["path"])])
            back = np.concatenate([r.topk_logprobs for r in open_corpus(out).iter_rows()]).astype(np.float64)
            cells = []
            for name, q in qs.items():
                stored_kl = forward_kl(back, q)
                diff = np.abs(stored_kl - exact_kl[name])
                cells.append(f"{diff.mean():.1e} / {abs(stored_kl.mean() - exact_kl[name].mean()):.1e}")
            label = f"{scale}, {alpha}" + (" (v1's uniform grid)" if alpha == 0 else "") + (" **(default)**" if (scale, alpha) == (512, 0.5) else "")
            lines.append(f"| {label} | {manifest['bytes'] / num_tokens:.2f} | {per_column['topk_logprob_codes'] / num_tokens:.2f} | "
                         f"{per_column['topk_ids'] / num_tokens:.2f} | " + " | ".join(cells) + f" | {np.abs(back - exact).max():.3f} |")
            print(lines[-1], flush=True)
    lines.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description="corpus bytes per response token and KL error")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--kl-tokens", type=int, default=100_000, help="random model: tokens the student scores for the KL check")
    parser.add_argument("--skip-random", action="store_true", help="only the synthetic distribution (fast)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--real-corpus", help="a corpus of the real teacher (SmolLM2-135M-Instruct, distill generate): "
                        "measure it on each log-prob grid")
    parser.add_argument("--student", action="append", default=[], metavar="NAME=DIR",
                        help="students for the real corpus's KL error (repeatable)")
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch

    lines = ["# Corpus size and log-prob precision", "",
             f"- date: {dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"{platform.platform()}; torch {torch.__version__}",
             f"- vocabulary {VOCAB}, k = {K}; `python bench/corpus_size.py --tokens {args.tokens} --kl-tokens {args.kl_tokens} --batch {args.batch} --new-tokens {args.new_tokens}`", ""]
    start = time.time()
    if not args.skip_random:
        rows, student = random_model_rows(args.tokens, args.batch, args.new_tokens, args.kl_tokens)
        measure("Random-init Qwen2 teacher (vocab 151936), sampled at T=1 through the HF capture path — worst case for ids",
                rows, student, lines)
    if not args.skip_synthetic:
        rows, student = synthetic_rows(args.tokens)
        measure("Synthetic trained-like distribution (Zipf id prior, dominant token, 0.1-5% tail)", rows, student, lines)
    if args.real_corpus:
        import importlib.util

        spec = importlib.util.spec_from_file_location("real_teacher", Path(__file__).resolve().parents[1] / "scripts" / "real_teacher.py")
        real_teacher = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(real_teacher)
        students = dict(s.split("=", 1) for s in args.student)
        measure_real(args.real_corpus, str(real_teacher.build()), students, lines)
    lines.append(f"Total bench time {time.time() - start:.0f} s.")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)


if __name__ == "__main__":
    main()
