"""The demo task, its shipped files and the shipped demo teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"
sys.path.insert(0, str(DEMO))

import make_data  # noqa: E402
import task  # noqa: E402


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_generator_is_deterministic_and_answers_check():
    first, second = task.problems(7, 300), task.problems(7, 300)
    assert first == second
    assert task.problems(8, 50) != first[:50]
    for problem in first:
        task.check_problem(problem)  # every worked line is right and ends in the answer
        assert task.extract_answer(problem.response) == problem.answer
    assert {p.kind for p in first} == {"timeline", "groups", "shopping", "two_counts", "exchange"}


def test_check_problem_rejects_a_wrong_line():
    problem = task.problems(0, 1)[0]
    lines = problem.response.split("\n")
    a, op, b = lines[0].split(" = ")[0].split(" ")
    lines[0] = f"{a} {op} {b} = {int(lines[0].split(' = ')[1]) + 1}"
    with pytest.raises(AssertionError):
        task.check_problem(task.Problem(problem.prompt, "\n".join(lines), problem.answer, problem.kind))


def test_is_coherent_accepts_every_generated_problem_and_catches_broken_ones():
    assert all(task.is_coherent(p.prompt) for p in task.problems(11, 2000))
    # the kinds of slips a small teacher makes when it writes prompts
    assert not task.is_coherent("Luis starts the day with 3 balloons. Then Theo gives him 1 balloon. "
                                "How many balloons does Sam have now?")  # a person the story never named
    assert not task.is_coherent("Mia has 4 shells. Then she finds 3 shells on the beach. How many stamps does Mia have now?")
    assert not task.is_coherent("How many shells does Mia have?")  # no story
    assert task.is_coherent("Mia has 4 shells. Then she finds 3 shells on the beach. How many shells does Mia have now?")


def test_shipped_files_are_what_the_generator_writes():
    seeds = _read_jsonl(DEMO / "seeds.jsonl")
    suite = _read_jsonl(ROOT / "eval" / "demo.jsonl")
    assert len(seeds) == 64 and len(suite) >= 500
    assert [s["prompt"] for s in seeds] == [p.prompt for p in make_data.seed_problems()]
    assert [s["reference"] for s in seeds] == [p.response for p in make_data.seed_problems()]
    expected = make_data.eval_problems()
    assert [r["prompt"] for r in suite] == [p.prompt for p in expected]
    assert [r["reference"] for r in suite] == [str(p.answer) for p in expected]
    assert {r["scorer"] for r in suite} == {"numeric"}


def test_seeds_eval_and_teacher_training_streams_are_disjoint():
    seeds = {p.prompt for p in make_data.seed_problems()}
    suite = {r["prompt"] for r in _read_jsonl(ROOT / "eval" / "demo.jsonl")}
    assert len(seeds) == 64 and len(suite) == make_data.NUM_EVAL
    assert not seeds & suite
    training = {p.prompt for p in make_data.training_problems(3000, exclude=seeds | suite)}
    assert not training & (seeds | suite)


def test_suite_loads_with_the_eval_scorers():
    from distill.eval.scorers import load_suite, score_output

    suite = load_suite("demo")
    assert len(suite.rows) >= 500
    row = suite.rows[0]
    right = score_output(row.scorer, f"1 + 1 = 2\nAnswer: {row.reference}", row.reference)
    wrong = score_output(row.scorer, f"Answer: {int(row.reference) + 1}", row.reference)
    assert right.score == 1.0 and wrong.score == 0.0


def test_shipped_teacher_fits_the_budget_and_shares_the_tokenizer():
    from transformers import AutoConfig, AutoTokenizer

    model_dir = ROOT / "teachers" / "demo" / "model"
    weights = model_dir / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 1024 * 1024
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "qwen2"
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    summary = json.loads((model_dir / "training_summary.json").read_text())
    assert summary["parameters"] == sum(p.numel() for p in _load(model_dir).parameters())


def test_tokenizer_spells_a_name_or_number_the_same_at_a_line_start_and_mid_sentence():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "teachers" / "demo" / "model")
    problem = make_data.seed_problems()[0]
    ids = tok(problem.prompt, add_special_tokens=False)["input_ids"]
    first = tok(problem.prompt.split()[0], add_special_tokens=False)["input_ids"]
    assert len(first) == 1 and ids.count(first[0]) >= 2  # the story's first name, again in the question
    for name, _ in task.NAMES:
        alone, inside = (tok(text, add_special_tokens=False)["input_ids"] for text in (name, f"to {name}."))
        assert len(alone) == 1 and alone[0] in inside, name
    for number in range(13):
        alone = tok(str(number), add_special_tokens=False)["input_ids"]
        assert alone[0] in tok(f"has {number} apples", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == problem.prompt


def test_tokenizer_file_gives_the_ids_transformers_gives():
    """tokenizer.json states the pre-tokenization transformers applies to a Qwen2 directory, so
    a reader of the file alone (the tokenizers library, older transformers) gets the same ids."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    model_dir = ROOT / "teachers" / "demo" / "model"
    raw, auto = Tokenizer.from_file(str(model_dir / "tokenizer.json")), AutoTokenizer.from_pretrained(model_dir)
    texts = [f"{p.prompt}\n{p.response}" for p in task.problems(7, 300)] + [make_data.meta_prompt_text()]
    for text in texts + ["Prompt: It costs 12 coins, 105 in all: don't ask\n\n  twice."]:
        assert raw.encode(text, add_special_tokens=False).ids == auto(text, add_special_tokens=False)["input_ids"], text


@pytest.mark.slow
def test_shipped_teacher_answers_eval_prompts_through_the_hf_backend():
    from distill.prompts import encode_prompt
    from distill.teachers import load_teacher
    from distill.teachers.base import GenerationRequest, SamplingParams

    teacher = load_teacher("demo")
    try:
        assert teacher.backend == "hf"
        rows = _read_jsonl(ROOT / "eval" / "demo.jsonl")[:24]
        requests = [GenerationRequest(key=str(i), prompt_ids=tuple(encode_prompt(teacher.tokenizer, [{"role": "user", "content": r["prompt"]}])), seed=i)
                    for i, r in enumerate(rows)]
        outputs = {o.key: o for o in teacher.generate(requests, SamplingParams(max_new_tokens=64, temperature=0.0, top_k_logprobs=5))}
    finally:
        teacher.close()
    correct = sum(task.extract_answer(outputs[str(i)].text) == int(r["reference"]) for i, r in enumerate(rows))
    # The shipped teacher scores 98.2% on the whole suite (docs/demo.md); on these 24 prompts it
    # must be well above the 90% the demo promises (chance is ~1/10).
    assert correct >= 21, f"{correct}/24 correct"
    assert sum(task.extract_answer(outputs[str(i)].text) is not None for i in range(len(rows))) >= 22
    assert all(outputs[str(i)].topk_logprobs.shape[1] == 5 for i in range(len(rows)))


def test_generate_responses_reference_scores_the_labelled_answers(tiny_teacher_dir, tmp_path):
    """`distill generate --responses reference` (how the demo's seeds-only baseline is trained):
    the corpus response is each seed's reference, with the teacher's top-k at every position."""
    from distill.config import ConfigError, load_config
    from distill.corpus import open_corpus
    from distill.generate import GenerateConfig, run

    seeds = tmp_path / "seeds.jsonl"
    rows = [{"prompt": p.prompt, "reference": p.response} for p in task.problems(11, 5)]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(GenerateConfig, None, {"teacher": str(tiny_teacher_dir), "prompts": str(seeds),
                                                "out": str(tmp_path / "c"), "responses": "reference",
                                                "top_k": 4, "progress": False})
    run(config)
    corpus = open_corpus(tmp_path / "c")
    got = {row.prompt_text: row for row in corpus.iter_rows()}
    assert corpus.num_rows == 5 and corpus.top_k == 4
    for r in rows:
        row = got[r["prompt"]]
        assert row.response_text == r["reference"]
        assert row.topk_logprobs.shape == (len(row.response_ids), 4)
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(json.dumps({"prompt": rows[0]["prompt"]}) + "\n")
    bad = load_config(GenerateConfig, None, {"teacher": str(tiny_teacher_dir), "prompts": str(unlabelled),
                                             "out": str(tmp_path / "d"), "responses": "reference", "progress": False})
    with pytest.raises(ConfigError, match="reference"):
        run(bad)


def test_grow_depth_keeps_what_the_model_computes_and_trains_every_layer(tmp_path):
    """train_teacher.grow_depth (8 -> 12 layers for the shipped teacher): the grown model gives
    the same logits and the same cached greedy continuation, its new layers sit between the old
    ones, it saves and reloads as a plain Qwen2, and one optimizer step moves the new layers."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT / "teachers" / "demo"))
    import train_teacher

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.randint(1, 64, (2, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        continuation = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    old = list(model.model.layers)
    grown = train_teacher.grow_depth(model, 6).eval()
    layers = list(grown.model.layers)
    assert len(layers) == grown.config.num_hidden_layers == 6
    assert [layers.index(layer) for layer in old] == [0, 1, 3, 4]  # a new layer after every second old one
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(6))
    with torch.no_grad():
        torch.testing.assert_close(grown(input_ids=ids).logits, before, atol=0, rtol=0)
        assert torch.equal(grown.generate(input_ids=ids, max_new_tokens=6, do_sample=False), continuation)
    grown.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 6
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, before, atol=0, rtol=0)
    reloaded.train()
    optimizer = torch.optim.AdamW(reloaded.parameters(), lr=1e-2)
    reloaded(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert reloaded.model.layers[1].self_attn.o_proj.weight.abs().sum() > 0
    assert reloaded.model.layers[4].mlp.down_proj.weight.abs().sum() > 0


def test_writing_phase_from_a_saved_model_is_the_phase_run_in_process(tmp_path):
    """The shipped teacher's last phase (``--writing-steps``) was run with ``--init`` from the saved
    task-phase weights; the script's defaults run it in the same process. Both must give the same
    bytes: trainlib.train reseeds torch and draws its batches from its own seed, and a saved fp32
    model reloads exactly."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(DEMO))
    import trainlib

    rng = random.Random(0)
    rows = [([1] + [rng.randrange(2, 64) for _ in range(rng.randrange(3, 9))], [rng.randrange(2, 64) for _ in range(4)])
            for _ in range(40)]
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    trainlib.train(model, rows, steps=3, batch_size=4, lr=1e-2, pad_id=0, seed=0, warmup=1, log_every=100)
    model.save_pretrained(tmp_path / "phase3")
    trainlib.train(model, rows[:20], steps=4, batch_size=4, lr=1e-3, pad_id=0, seed=1, warmup=1, cosine=False, log_every=100)
    resumed = AutoModelForCausalLM.from_pretrained(tmp_path / "phase3")
    trainlib.train(resumed, rows[:20], steps=4, batch_size=4, lr=1e-3, pad_id=0, seed=1, warmup=1, cosine=False, log_every=100)
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_teacher_script_runs_every_phase_and_checks_its_flags(tmp_path):
    """train_teacher.py end to end at toy sizes (pretraining, growth, task phase, writing phase):
    the summary records the phases; a task share of 1 in the writing phase is refused by name."""
    script = ROOT / "teachers" / "demo" / "train_teacher.py"
    out = tmp_path / "teacher"
    small = ["--task-examples", "64", "--augment-examples", "4", "--pretrain-steps", "2", "--layers", "2", "--grow-to", "3",
             "--steps", "2", "--writing-steps", "2", "--writing-examples", "4", "--hidden-size", "32",
             "--intermediate-size", "64", "--batch-size", "4", "--writing-kind-weights", "exchange=2"]
    done = subprocess.run([sys.executable, str(script), "--out", str(out), *small], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "writing phase: 2 steps on 4 fresh augmentation examples and 4 task examples" in done.stdout
    summary = json.loads((out / "training_summary.json").read_text())
    assert (summary["layers"], summary["grown_from"], summary["steps"], summary["writing_steps"]) == (3, 2, 2, 2)
    assert (summary["writing_examples"], summary["writing_task_share"]) == (4, 0.5)
    assert summary["writing_kind_weights"] == {"exchange": 2.0}
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "x"), "--writing-task-share", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--writing-task-share must be in [0, 1), got 1.0" in bad.stderr
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "x"), "--writing-kind-weights", "echange=2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--writing-kind-weights 'echange=2': expected KIND=WEIGHT" in bad.stderr


def test_writing_kind_weights_shift_the_written_kinds_and_leave_the_plain_draw_alone():
    """--writing-kind-weights: exchange=3 makes the written targets ~3x as often two-person
    exchanges, never repeats a problem within a pair, and leaves the examples shown (and the
    unweighted draw phases 2-3 were built with) as before; bad specs are named."""
    import collections
    import random

    sys.path.insert(0, str(ROOT / "teachers" / "demo"))
    import train_teacher

    pool = task.problems(seed=5, count=2000)
    kind_of = {p.prompt: p.kind for p in pool}

    def written_kinds(pairs):
        return collections.Counter(kind_of[line[len("Prompt: "):]] for _, response in pairs for line in response.split("\n"))

    plain = train_teacher.augmentation_examples(300, random.Random(1), pool, 3, 5)
    assert plain == train_teacher.augmentation_examples(300, random.Random(1), pool, 3, 5, {})
    weighted = train_teacher.augmentation_examples(300, random.Random(1), pool, 3, 5, {"exchange": 3.0})
    share = {name: counts["exchange"] / sum(counts.values())
             for name, counts in (("plain", written_kinds(plain)), ("weighted", written_kinds(weighted)))}
    base = sum(p.kind == "exchange" for p in pool) / len(pool)
    assert abs(share["plain"] - base) < 0.04
    assert abs(share["weighted"] - 3 * base / (1 + 2 * base)) < 0.05
    assert all(len(set(response.split("\n"))) == 5 for _, response in weighted)
    assert weighted[0][0] == plain[0][0]  # the examples shown come from the same draw
    assert train_teacher.parse_kind_weights("exchange=3, shopping=0.5") == {"exchange": 3.0, "shopping": 0.5}
    for bad, message in (("exchang=3", "KIND one of"), ("exchange", "KIND=WEIGHT"), ("exchange=x", "not a number"),
                         ("exchange=0", "must be > 0")):
        with pytest.raises(ValueError, match=message):
            train_teacher.parse_kind_weights(bad)
