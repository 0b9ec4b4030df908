"""`distill inspect DIR...`: what a corpus holds, for people (summary) and scripts (--json)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def floor_rows(table: Any, top_k: int, grid: Any) -> int:
    """Rows where the teacher's most likely token sits at the log-prob floor (-MAX_NATS): a
    distribution no working model produces, the mark of a broken teacher."""
    import numpy as np

    from distill.corpus.encoding import floor_code

    if not top_k or table.num_rows == 0:
        return 0
    column = table["topk_logprob_codes"].combine_chunks()
    offsets = np.asarray(column.offsets)
    values = np.asarray(column.values)
    first = np.arange(0, len(values), top_k)  # each position's top-1 code (absolute)
    at_floor = first[values[first] >= floor_code(grid)]
    return int(np.unique(np.searchsorted(offsets, at_floor, side="right") - 1).size)


def summarize(corpus: Any) -> dict[str, Any]:
    """The numbers of a corpus as one JSON-able dict (the --json output)."""
    import pyarrow.parquet as pq

    from distill.dedup import diversity

    prompts: dict[str, str] = {}  # prompt id -> text, for the diversity figures
    reasons: Counter[str] = Counter()
    floor = 0
    for path, grid in zip(corpus.shard_paths, corpus.shard_grids):
        columns = ["prompt_id", "finish_reason", "prompt_text"] + (["topk_logprob_codes"] if corpus.top_k else [])
        table = pq.read_table(path, columns=columns)
        prompts.update(zip(table["prompt_id"].to_pylist(), table["prompt_text"].to_pylist()))
        reasons.update(table["finish_reason"].to_pylist())
        floor += floor_rows(table, corpus.top_k, grid)
    skipped: Counter[str] = Counter()
    duplicates = 0
    runs = {m.get("identity_sha256") for m in corpus.manifests}
    for manifest in corpus.manifests:
        if manifest.get("worker", {}).get("index", 0) == 0:  # ingest stats are the same for every worker
            skipped.update(manifest.get("ingest", {}).get("skipped", {}))
            duplicates += manifest.get("ingest", {}).get("duplicates", 0)
    first = corpus.manifests[0]
    response_tokens = corpus.response_tokens
    return {
        "rows": corpus.num_rows,
        "prompts": len(prompts),
        "response_tokens": response_tokens,
        "prompt_tokens": sum(m.get("prompt_tokens", 0) for m in corpus.manifests),
        "top_k": corpus.top_k,
        "black_box": corpus.black_box,
        "bytes": corpus.num_bytes,
        "bytes_per_token": round(corpus.num_bytes / response_tokens, 3) if response_tokens else None,
        "teacher": corpus.teacher,
        "tokenizer_fingerprint": corpus.tokenizer_fingerprint,
        "schema_version": corpus.schema_version,
        "generation": first.get("generation", {}),
        "logprob_scale": first.get("encoding", {}).get("logprob_scale"),
        "logprob_alpha": first.get("encoding", {}).get("logprob_alpha", 0.0),
        "finish_reasons": dict(sorted(reasons.items())),
        # rows whose top-1 log-prob is at the storage floor (-1000 nats): a broken teacher
        "rows_at_logprob_floor": floor,
        "stray_files": [str(p) for p in corpus.stray_files],
        "duplicates_collapsed": duplicates,
        "skipped": dict(sorted(skipped.items())),
        "shards": len(corpus.shard_paths),
        "runs": len(runs),
        "manifests": [str(p) for p in corpus.manifest_paths],
        # Prompt augmentation's stats (accepted, rejected per reason, ...) when it ran; None otherwise.
        "augmentation": first.get("augmentation"),
        # Of the distinct prompts answered: distinct-1/2/3 word n-grams, word-length histogram.
        "diversity": diversity(sorted(prompts.values())),
    }


def _tokenizer_for(teacher: dict[str, Any]) -> Any:
    """The teacher's tokenizer if its model is a local folder (to show tokens as text), else None."""
    model = teacher.get("model")
    if not model or not (Path(model) / "config.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError):
        return None


def sample_lines(corpus: Any, count: int, positions: int = 3) -> list[str]:
    if count <= 0:
        return []
    tokenizer = _tokenizer_for(corpus.teacher)

    def show(token_id: int) -> str:
        return repr(tokenizer.decode([int(token_id)])) if tokenizer is not None else str(int(token_id))

    lines = []
    for n, row in enumerate(corpus.iter_rows()):
        if n >= count:
            break
        lines.append(f"--- row {row.id} (sample {row.sample_index}, {row.num_response_tokens} tokens, {row.finish_reason})")
        lines.append(f"  prompt:   {row.prompt_text[:200]!r}")
        lines.append(f"  response: {row.response_text[:200]!r}")
        if row.topk_ids is not None:
            for t in range(min(positions, row.num_response_tokens)):
                top = ", ".join(f"{show(i)} {lp:.2f}" for i, lp in zip(row.topk_ids[t][:5], row.topk_logprobs[t][:5]))
                lines.append(f"  t={t} sampled {show(row.response_ids[t])} ({row.sampled_logprobs[t]:.2f}); top: {top}")
    return lines


def augmentation_lines(aug: dict[str, Any]) -> list[str]:
    """Prompt augmentation's yield: candidates -> accepted, and each rejection reason's share."""
    candidates = max(int(aug.get("candidates") or 0), 1)

    def share(n: int) -> str:
        return f"{n} ({100 * n / candidates:.1f}%)"

    lines = [f"augmentation  {aug['seeds']} seeds -> {aug['accepted']}/{aug['target']} synthetic prompts "
             f"({aug['stopped'].replace('_', ' ')}, {aug['rounds']} rounds, {aug.get('requests', 0)} requests)",
             f"  yield       {aug.get('candidates', 0)} candidates: accepted {share(aug['accepted'])}"
             + (f", surplus {share(aug['surplus'])}" if aug.get("surplus") else "")]
    rejected = sorted(((k, v) for k, v in aug["rejected"].items() if v), key=lambda kv: -kv[1])
    lines.append("  rejected    " + (", ".join(f"{k} {share(v)}" for k, v in rejected) if rejected else "none"))
    filters = aug.get("filters")
    if filters:
        floor = filters.get("improbable_floor")
        lines.append(f"  filters     request form {'on' if filters.get('request_form') else 'off'}, scripts "
                     f"{'/'.join(filters['seed_scripts']) if filters.get('seed_scripts') else 'any'}, words "
                     f"{'-'.join(map(str, filters['word_range'])) if filters.get('word_range') else 'any'}, improbable below "
                     f"{f'{floor:.2f} nats/token' if floor is not None else '(off)'}, structured output "
                     f"{'on' if filters.get('structured_output') else 'off'}")
    return lines


def run(paths: list[str], *, as_json: bool = False, samples: int = 2, verify: bool = True) -> dict[str, Any]:
    """Print the summary (or JSON) of the corpus at ``paths`` (or of a ``distill augment`` output
    folder: its yield); returns the summary dict."""
    from distill.corpus import open_corpus
    from distill.corpus.schema import MANIFEST_NAME, CorpusError

    if len(paths) == 1 and (Path(paths[0]) / "augment.json").is_file() and not (Path(paths[0]) / MANIFEST_NAME).is_file():
        path = Path(paths[0]) / "augment.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            manifest["augmentation"]["rejected"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorpusError(f"{path}: not a distill augment manifest ({type(exc).__name__}: {exc}); the file is damaged "
                              "or the augmentation did not finish") from None
        if as_json:
            print(json.dumps(manifest["augmentation"], indent=2, ensure_ascii=False))
        else:
            print("\n".join([f"prompts       {Path(paths[0]) / 'prompts.jsonl'}"] + augmentation_lines(manifest["augmentation"])))
        return manifest["augmentation"]
    if len(paths) == 1 and (Path(paths[0]) / "logs.json").is_file() and not (Path(paths[0]) / MANIFEST_NAME).is_file():
        from distill.logs import summary_lines

        path = Path(paths[0]) / "logs.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            lines = summary_lines(summary, Path(paths[0]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorpusError(f"{path}: not a distill logs summary ({type(exc).__name__}: {exc}); the file is damaged") from None
        print(json.dumps(summary, indent=2, ensure_ascii=False) if as_json else "\n".join(lines))
        return summary
    corpus = open_corpus(paths, verify=verify)
    if verify:
        corpus.verify()
    info = summarize(corpus)
    if as_json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return info
    teacher = info["teacher"]
    lines = [
        f"corpus        {', '.join(paths)}  (schema v{info['schema_version']}, {info['shards']} shard(s), "
        f"{'checksums ok' if verify else 'checksums not verified'})",
        f"rows          {info['rows']}  ({info['prompts']} prompts)",
        f"tokens        {info['response_tokens']} response, {info['prompt_tokens']} prompt",
        f"top-k         {info['top_k']}{'  (black-box teacher: no log-probs)' if info['black_box'] else ''}",
        f"size          {info['bytes'] / 1e6:.2f} MB, {info['bytes_per_token']} bytes per response token",
        f"teacher       {teacher.get('name')} ({teacher.get('backend')}: {teacher.get('model')})",
        f"tokenizer     {info['tokenizer_fingerprint'][:16]}",
        f"generation    {json.dumps(info['generation'], sort_keys=True)}",
        f"finish        {info['finish_reasons']}",
        f"ingest        duplicates collapsed {info['duplicates_collapsed']}, skipped {info['skipped'] or 'none'}",
    ]
    if info["augmentation"] is not None:
        lines += augmentation_lines(info["augmentation"])
    div = info["diversity"]
    hist = div["length_words_histogram"]
    lines.append(f"diversity     distinct-1/2/3 {div['distinct_1']:.3f} / {div['distinct_2']:.3f} / {div['distinct_3']:.3f}, "
                 f"mean prompt {div['mean_length_words']} words")
    if hist["counts"]:
        bins = "  ".join(f"{lo}-{hi - 1}: {n}" for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"]))
        lines.append(f"prompt words  {bins}")
    if info["rows_at_logprob_floor"]:
        lines.append(f"WARNING       {info['rows_at_logprob_floor']} row(s) have their top log-prob at the floor "
                     "(-1000 nats): the teacher's output was broken (NaN weights, fp16/bf16 overflow); regenerate them")
    if info["stray_files"]:
        lines.append(f"WARNING       stray Parquet file(s) no manifest lists: {', '.join(info['stray_files'])}")
    print("\n".join(lines + sample_lines(corpus, samples)))
    return info
