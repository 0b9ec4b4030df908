"""`distill generate --augment N` on the real HF teacher, then `distill inspect --json`.

The tiny random teacher writes byte soup, so for the augmentation requests only (those asking
for no log-probs) its text is swapped for planted prompts; the responses, their top-k and the
corpus are the real HF backend's.
"""

from __future__ import annotations

import dataclasses
import json
import random


from click.testing import CliRunner

from distill.cli import main
from tests.augment.fake_teacher import random_prompt
from tests.augment.test_augment import SEED_TEXTS


class PlantedAugmentText:
    def __init__(self, inner):
        self.inner = inner
        self.tokenizer, self.max_context, self.backend = inner.tokenizer, inner.max_context, inner.backend
        self.augment_requests = 0

    def fingerprint(self):
        return self.inner.fingerprint()

    def generate(self, requests, params):
        seeds = {r.key: r.seed for r in requests}
        for out in self.inner.generate(requests, params):
            if params.top_k_logprobs == 0:
                self.augment_requests += 1
                rng = random.Random(seeds[out.key])
                out = dataclasses.replace(out, text="\n".join("Prompt: " + random_prompt(rng) for _ in range(3)), finish_reason="stop")
            yield out

    def score(self, requests, top_k):
        return self.inner.score(requests, top_k)

    def load(self, score=False):
        self.inner.load(score)

    def close(self):
        self.inner.close()


def test_generate_augment_then_inspect(tmp_path, tiny_teacher_dir, monkeypatch):
    from distill.teachers.hf import HFTeacher

    teachers = []

    def load_teacher(spec, backend=None, **overrides):
        teachers.append(PlantedAugmentText(HFTeacher(str(spec), device="cpu", dtype="float32", **overrides)))
        return teachers[-1]

    monkeypatch.setattr("distill.teachers.load_teacher", load_teacher)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in SEED_TEXTS))
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"prompt": "Totally unrelated evaluation prompt about the history of tea ceremonies in Kyoto temples."}) + "\n")
    aug_yaml = tmp_path / "aug.yaml"
    aug_yaml.write_text("few_shot: 2\nrequests_per_round: 3\ngeneration_max_tokens: 16\n")
    out = tmp_path / "corpus"
    args = ["generate", "--teacher", str(tiny_teacher_dir), "--prompts", str(seeds), "--out", str(out),
            "--max-new-tokens", "4", "--top-k", "3", "--batch-size", "8", "--no-progress",
            "--augment", "10", "--augment-config", str(aug_yaml), "--decontaminate", str(suite)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "10/10 prompts accepted from 4 seeds" in result.output
    # response throughput counts the answering phase only; augmentation is timed on its own
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["stats"]
    augment_s = manifest["augmentation"]["timing_s"]["total"]
    assert stats["respond_s_last_run"] + augment_s <= stats["elapsed_s_last_run"] + 0.05
    tokens, rate = stats["new_response_tokens_last_run"], stats["response_tokens_per_s_last_run"]
    # (times are recorded rounded to 0.01 s)
    assert rate * (stats["respond_s_last_run"] - 0.006) <= tokens <= rate * (stats["respond_s_last_run"] + 0.006)
    assert rate > tokens / stats["elapsed_s_last_run"]  # the whole run's rate would be lower
    assert f"of which augmentation {augment_s:.1f} s" in result.output

    info = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    aug = info["augmentation"]
    assert aug["seeds"] == 4 and aug["accepted"] == 10 and isinstance(aug["rejected"], dict)
    assert aug["decontamination"]["suite_prompts"] == 1
    assert info["prompts"] == 14 and info["rows"] == 14
    assert {"distinct_1", "distinct_2", "distinct_3", "length_words_histogram"} <= set(info["diversity"])
    assert sum(info["diversity"]["length_words_histogram"]["counts"]) == 14
    human = CliRunner().invoke(main, ["inspect", str(out), "--samples", "0"]).output
    assert "augmentation  4 seeds -> 10/10 synthetic prompts" in human and "distinct-1/2/3" in human
    candidates = aug["candidates"]
    assert f"yield       {candidates} candidates: accepted 10 ({100 * 10 / candidates:.1f}%)" in human
    assert "filters     request form on, scripts LATIN" in human
    for reason, n in aug["rejected"].items():  # each reason's share of the candidates
        assert not n or f"{reason} {n} ({100 * n / candidates:.1f}%)" in human
    # the augmentation folder alone: its yield
    alone = CliRunner().invoke(main, ["inspect", str(out / "augment")])
    assert alone.exit_code == 0 and f"yield       {candidates} candidates" in alone.output, alone.output
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "augment.json").write_text('{"kind": "distill-augment"')
    bad_inspect = CliRunner().invoke(main, ["inspect", str(damaged)])
    assert bad_inspect.exit_code == 2 and f"{damaged / 'augment.json'}: not a distill augment manifest" in bad_inspect.output

    # Synthetic rows carry their lineage into the corpus.
    from distill.corpus import open_corpus

    origins = [row.origin for row in open_corpus(out).iter_rows()]
    synthetic = [o for o in origins if o.get("source") == "synthetic"]
    assert len(synthetic) == 10 and all(o["round"] >= 1 and len(o["parents"]) == 2 for o in synthetic)
    # ... and the accepted prompts can be read before (or without) the responses, as with `distill augment`.
    written = [json.loads(line) for line in (out / "augment" / "prompts.jsonl").read_text().splitlines()]
    assert len(written) == 10 and all(w["origin"]["source"] == "synthetic" for w in written)
    assert json.loads((out / "augment" / "augment.json").read_text())["augmentation"]["accepted"] == 10

    # The same command again: augmentation resumes from its rounds (no new prompts written), corpus complete.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "already complete" in again.output
    assert teachers[-1].augment_requests == 0

    bad = CliRunner().invoke(main, args[:-2] + ["--decontaminate", "no-such-suite", "--out", str(tmp_path / "c2")])
    assert bad.exit_code == 2 and "unknown suite 'no-such-suite'" in bad.output
    bad = CliRunner().invoke(main, args + ["--shard", "0/2", "--out", str(tmp_path / "c3")])
    assert bad.exit_code == 2 and "--augment: with --shard" in bad.output
