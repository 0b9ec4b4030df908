"""Augmentation with a real instruct teacher (SmolLM2-135M-Instruct) from 111 varied English seed
prompts (facts, arithmetic, rewriting, lists, code, explanations, writing, advice, words): of the
prompts it accepts, at least 80% must be usable by the independent check in ``usable.py``, which
shares no code with distill's filters. Defaults throughout except the budget (one round of 32
requests) and the temperature: 0.7, at which this 135M model writes sentences rather than word
salad. About 90 s on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from distill.cli import main
from tests.real.test_real_teacher import real_teacher_dir  # noqa: F401  (the session fixture)
from tests.real.usable import usable, word_count

pytestmark = pytest.mark.real
SEEDS = Path(__file__).parent / "data" / "seeds.jsonl"


def test_accepted_prompts_are_usable(real_teacher_dir, tmp_path):  # noqa: F811
    seeds = [json.loads(line)["prompt"] for line in SEEDS.read_text().splitlines()]
    assert len(seeds) >= 100
    low, high = min(map(word_count, seeds)), max(map(word_count, seeds))
    out = tmp_path / "augment"
    result = CliRunner().invoke(main, ["augment", "--teacher", str(real_teacher_dir), "--prompts", str(SEEDS),
                                       "--out", str(out), "-n", "200", "--requests-per-round", "32", "--max-rounds", "1",
                                       "--generation-max-tokens", "160", "--temperature", "0.7", "--no-progress"])
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "augment.json").read_text())["augmentation"]
    accepted = [json.loads(line)["prompt"] for line in (out / "prompts.jsonl").read_text().splitlines()]
    verdicts = [usable(text, low, high) for text in accepted]
    share = sum(ok for ok, _ in verdicts) / max(1, len(accepted))
    print(f"\ncandidates {stats['candidates']}, accepted {len(accepted)}, usable {share:.0%}")
    print("rejected: " + ", ".join(f"{k} {v}" for k, v in stats["rejected"].items() if v))
    for text, (ok, why) in zip(accepted, verdicts):
        print(("  ok   " if ok else f"  BAD ({why}) ") + text)
    assert stats["filters"]["request_form"] and stats["filters"]["answer_prefix"] == '["'
    assert stats["filters"]["improbable_floor"] is not None
    assert len(accepted) >= 8, stats["rejected"]
    assert share >= 0.8, [(t, why) for t, (ok, why) in zip(accepted, verdicts) if not ok]
