"""`distill eval`: scorers, suite validation, CI math, the gate, and whole runs on tiny models
with known behaviour (a model that always answers "Answer: 42", one that answers "Answer: 41",
one whose outputs are all empty, and a directory that fails to load)."""

from __future__ import annotations

import json
import os
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.config import ConfigError
from distill.eval import EXIT_GATE_FAILED, EXIT_MODEL_FAILED
from distill.eval.gate import GATE_METRICS, evaluate_gate, parse_gate
from distill.eval.stats import score_with_ci, wilson_interval
from distill.eval.scorers import (
    SuiteError,
    answers_agree,
    judge_result,
    load_suite,
    parse_judge_score,
    parse_scorer,
    score_output,
)

REPORT_KEYS = {"score", "score_ci", "agreement", "kl_to_teacher", "tokens_per_s", "latency_p50_ms", "latency_p95_ms", "params"}


def write_suite(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- scorers


def test_exact_and_contains_normalize_case_and_whitespace():
    exact = parse_scorer("exact", "s:1")
    assert score_output(exact, "  Paris \n", "paris").score == 1.0
    assert score_output(exact, "Paris, France", "Paris").score == 0.0
    contains = parse_scorer("contains", "s:1")
    assert score_output(contains, "The answer is  JUPITER.", "jupiter").score == 1.0
    assert score_output(contains, "Saturn", "Jupiter").score == 0.0


def test_regex_uses_last_match_group_and_reference_in_either_form():
    regex = parse_scorer(r"regex:Answer: (-?\d+)", "s:1")
    assert score_output(regex, "Answer: 3, no wait. Answer: 42", "42").score == 1.0
    assert score_output(regex, "Answer: -7", "Answer: -7").score == 1.0
    assert score_output(regex, "Answer: 41", "42").score == 0.0
    result = score_output(regex, "I think 42", "42")
    assert (result.score, result.failure) == (0.0, "no_answer")
    whole = parse_scorer(r"regex:\d+ apples", "s:1")  # no group: the whole match is the answer
    assert score_output(whole, "I have 3 apples", "3 apples").score == 1.0


def test_numeric_last_number_with_tolerances():
    assert score_output(parse_scorer("numeric", "s:1"), "3 + 39 = 42", "42").score == 1.0
    assert score_output(parse_scorer("numeric", "s:1"), "42.5", "42").score == 0.0
    assert score_output(parse_scorer("numeric", "s:1"), "about 1,234.5 in total", "1234.5").score == 1.0
    assert score_output(parse_scorer("numeric:0.01", "s:1"), "pi is 3.14", "3.14159").score == 1.0
    assert score_output(parse_scorer("numeric:0.001", "s:1"), "pi is 3.14", "3.14159").score == 0.0
    assert score_output(parse_scorer("numeric:1%", "s:1"), "1600 m", "1609").score == 1.0
    assert score_output(parse_scorer("numeric:0.1%", "s:1"), "1600 m", "1609").score == 0.0
    assert score_output(parse_scorer("numeric", "s:1"), "no idea", "4").failure == "no_answer"
    assert score_output(parse_scorer("numeric", "s:1"), "pages 3-5", "5").score == 1.0  # a dash, not a minus
    assert score_output(parse_scorer("numeric", "s:1"), "it went from 2 to -5", "-5").score == 1.0
    assert score_output(parse_scorer("numeric", "s:1"), "1,2,3", "3").score == 1.0
    assert score_output(parse_scorer("numeric", "s:1"), "x = .5", "0.5").score == 1.0


def test_python_scorer_results_and_errors():
    search = (Path.cwd(),)
    has_42 = parse_scorer("python:tests.eval.tiny_scorers:has_42", "s:1", search)
    assert score_output(has_42, "it is 42", None).score == 1.0
    assert score_output(parse_scorer("python:tests.eval.tiny_scorers:half", "s:1", search), "x", None).score == 0.5
    boom = score_output(parse_scorer("python:tests.eval.tiny_scorers:boom", "s:1", search), "x", None)
    assert (boom.score, boom.failure) == (0.0, "scorer_error: RuntimeError")
    bad = score_output(parse_scorer("python:tests.eval.tiny_scorers:out_of_range", "s:1", search), "x", None)
    assert bad.failure.startswith("scorer_error")


def test_empty_output_is_a_counted_failure_for_every_scorer():
    for spec in ("exact", "contains", "numeric", r"regex:(\d+)", "python:tests.eval.tiny_scorers:has_42"):
        result = score_output(parse_scorer(spec, "s:1", (Path.cwd(),)), " \n ", "4")
        assert (result.score, result.failure) == (0.0, "empty_output"), spec
    assert judge_result("", "Score: 5").failure == "empty_output"


def test_judge_score_parsing():
    assert parse_judge_score("Score: 4") == 4
    assert parse_judge_score("The answer is fine.\n**Score:** 5") == 5
    assert parse_judge_score("score = 2, because") == 2
    assert parse_judge_score(" 3 ") == 3
    assert parse_judge_score("Score: 7") is None
    assert parse_judge_score("Score: 4.5") is None
    assert parse_judge_score("I like it") is None
    assert judge_result("an answer", "Score: 4").score == 0.75
    assert judge_result("an answer", "Score: 1").score == 0.0
    assert judge_result("an answer", "great").failure == "judge_unparsed"
    assert judge_result("an answer", None).failure == "judge_unavailable"


def test_agreement_compares_extracted_answers():
    regex = parse_scorer(r"regex:Answer: (\d+)", "s:1")
    assert answers_agree(regex, "42", "42") is True
    assert answers_agree(regex, None, "42") is False
    assert answers_agree(regex, "42", None) is None  # teacher gave no answer: row not counted
    numeric = parse_scorer("numeric:5%", "s:1")
    assert answers_agree(numeric, 41.0, 42.0) is True
    assert answers_agree(parse_scorer("numeric", "s:1"), 41.0, 42.0) is False


# ---------------------------------------------------------------- suites


def test_suite_loads_prompts_messages_and_shipped_names(tmp_path):
    path = write_suite(tmp_path / "s.jsonl", [
        {"prompt": "a?", "reference": "1", "scorer": "exact"},
        "",
        {"id": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "b?"}],
         "reference": 2, "scorer": "numeric"},
        {"prompt": "c?", "scorer": "judge", "rubric": "be kind"},
    ])
    suite = load_suite(str(path))
    assert [r.id for r in suite.rows] == ["s-1", "m", "s-4"]
    assert suite.rows[1].messages[0]["role"] == "system" and suite.rows[1].reference == "2"
    assert suite.scorer_counts() == {"exact": 1, "numeric": 1, "judge": 1}
    assert len(load_suite(str(path), limit=2).rows) == 2
    example = load_suite("example")  # shipped in eval/, by name
    assert set(example.scorer_counts()) == {"exact", "regex", "numeric", "contains", "python", "judge"}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a", "reference": "1", "scorer": "exact"', "malformed JSON"),
        ('["a", "1"]', "expected a JSON object"),
        ('{"reference": "1", "scorer": "exact"}', "missing or empty 'prompt'"),
        ('{"prompt": "a", "reference": "1", "scorer": "fuzzy"}', "unknown scorer 'fuzzy'; known scorers: exact, regex:PATTERN"),
        ('{"prompt": "a", "reference": "1"}', "missing 'scorer'"),
        ('{"prompt": "a", "scorer": "exact"}', "missing or empty 'reference'"),
        ('{"prompt": "a", "reference": "ten", "scorer": "numeric"}', "holds no number"),
        ('{"prompt": "a", "reference": "1", "scorer": "numeric:-1"}', "tolerance must be a number >= 0"),
        ('{"prompt": "a", "reference": "1", "scorer": "regex:(unclosed"}', "invalid regular expression"),
        ('{"prompt": "a", "reference": "1", "scorer": "python:no_such_module_xyz:f"}', "cannot import 'no_such_module_xyz'"),
        ('{"prompt": "a", "reference": "1", "scorer": "python:tests.eval.tiny_scorers:nope"}', "has no function 'nope'"),
        ('{"messages": [{"role": "user", "content": 3}], "reference": "1", "scorer": "exact"}', "messages[0]"),
        ('{"prompt": "a", "reference": ["1"], "scorer": "exact"}', "'reference' must be a string or a number"),
    ],
)
def test_suite_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "reference": "1", "scorer": "exact"}\n\n' + line + "\n")
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    assert f"{path}:3" in str(info.value)
    assert message in str(info.value)


def test_suite_level_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SuiteError, match="no rows"):
        load_suite(str(empty))
    with pytest.raises(ConfigError, match="neither a file nor a shipped suite"):
        load_suite(str(tmp_path / "missing.jsonl"))
    dup = write_suite(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "x", "reference": "1", "scorer": "exact"}] * 2)
    with pytest.raises(SuiteError, match=rf"{dup}:2: duplicate id 'a' \(first on line 1\)"):
        load_suite(str(dup))


# ---------------------------------------------------------------- statistics


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and round(high, 4) == 0.1611
    low, high = wilson_interval(20, 20)
    assert round(low, 4) == 0.8389 and high == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_score_ci_picks_wilson_for_binary_and_bootstrap_otherwise():
    mean, ci, method = score_with_ci([1, 0, 1, 1])
    assert (mean, method) == (0.75, "wilson") and ci == wilson_interval(3, 4)
    scores = [0.0, 0.25, 0.5, 0.75, 1.0] * 20
    mean, (low, high), method = score_with_ci(scores, seed=0)
    assert method == "bootstrap" and mean == 0.5
    # The bootstrap interval of a mean is close to mean ± 1.96 * sd / sqrt(n).
    half = 1.96 * np.std(scores) / math.sqrt(len(scores))
    assert abs((high - low) / 2 - half) < 0.01
    assert score_with_ci(scores, seed=0) == score_with_ci(scores, seed=0)


# ---------------------------------------------------------------- gate

MODELS = {
    "student": {"score": 0.9, "kl_to_teacher": 0.2, "tokens_per_s": 300.0, "params": 1000, "agreement": None,
                "error": None},
    "teacher": {"score": 0.93, "kl_to_teacher": 0.0, "tokens_per_s": 100.0, "params": 10000},
    "broken": {"score": None, "error": "cannot load model: x"},
}


def gate(expr):
    return evaluate_gate(parse_gate(expr, MODELS), MODELS)


def test_gate_pass_and_fail_with_values():
    passed, values, why = gate("student.score >= 0.95 * teacher.score")
    assert passed and why is None and values == {"student.score": 0.9, "teacher.score": 0.93}
    assert not gate("student.score >= teacher.score")[0]
    assert gate("student.tokens_per_s >= 3 * teacher.tokens_per_s and teacher.params / student.params >= 5")[0]
    assert not gate("student.kl_to_teacher < 0.1 or student.score > 0.95")[0]
    assert gate("not (student.score < 0.5)")[0]
    assert gate("0.8 < student.score <= 0.9")[0]
    assert gate("-student.kl_to_teacher + 1 > 0.5")[0]


def test_gate_unavailable_values_fail_with_a_reason():
    passed, _, why = gate("broken.score > 0.5")
    assert not passed and "broken.score is unavailable (cannot load model: x)" in why
    passed, _, why = gate("student.agreement > 0.5")
    assert not passed and "student.agreement is unavailable" in why
    passed, _, why = gate("student.score / (teacher.params - 10000) > 0")
    assert not passed and "division by zero" in why


@pytest.mark.parametrize(
    "expr, message",
    [
        ("student.score >=", "invalid expression"),
        ("__import__('os').system('true')", "is not allowed"),
        ("student.score.__class__ > 0", "is not allowed"),
        ("student['score'] > 0", "is not allowed"),
        ("score > 0.5", "is not allowed"),
        ("(lambda: 1)() > 0", "is not allowed"),
        ("student.score ** 2 > 0", "is not allowed"),
        ("student.score > 'a'", "is not allowed"),
        ("student.score > True", "is not allowed"),
        ("studnet.score > 0.5", "unknown model 'studnet'"),
        ("student.accuracy > 0.5", "unknown metric 'accuracy'"),
        ("student.score", "must be a comparison"),
    ],
)
def test_bad_gate_expressions_are_clear_errors(expr, message):
    with pytest.raises(ConfigError, match="--gate") as info:
        parse_gate(expr, MODELS)
    assert message in str(info.value)


# ---------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer_dir):
    from tests.eval.models import make_constant_answer_dir, make_empty_output_dir

    base = tmp_path_factory.mktemp("eval_models")
    broken = base / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    return {
        "a42": make_constant_answer_dir(base / "a42", tiny_tokenizer_dir, "Answer: 42"),
        "a41": make_constant_answer_dir(base / "a41", tiny_tokenizer_dir, "Answer: 41", sharpness=2.0),
        "empty": make_empty_output_dir(base / "empty", tiny_tokenizer_dir),
        "judge4": make_constant_answer_dir(base / "judge4", tiny_tokenizer_dir, "Score: 4"),
        "broken": broken,
    }


SUITE_ROWS = [
    {"prompt": "Say the answer.", "reference": "Answer: 42", "scorer": "exact"},
    {"prompt": "What is 6 times 7?", "reference": "42", "scorer": r"regex:Answer: (-?\d+)"},
    {"prompt": "What is 40 plus 2?", "reference": "42", "scorer": "numeric"},
    {"prompt": "About how much is 41.8?", "reference": "41.8", "scorer": "numeric:5%"},
    {"prompt": "Mention forty-two.", "reference": "42", "scorer": "contains"},
    {"prompt": "Any number?", "scorer": "python:tests.eval.tiny_scorers:has_42"},
    {"prompt": "What is 40 plus 1?", "reference": "41", "scorer": r"regex:Answer: (-?\d+)"},
    {"prompt": "Capital of France?", "reference": "Paris", "scorer": "exact"},
]


def eval_args(models, suite, out, *extra):
    return [
        "eval", "--model", f"teacher={models['a42']}", "--model", f"student={models['a41']}",
        "--model", f"empty={models['empty']}", "--model", f"broken={models['broken']}",
        "--suite", str(suite), "--out", str(out), "--teacher", "teacher", "--max-new-tokens", "12",
        "--batch-size", "4", "--speed-prompts", "3", "--kl-top-k", "1000", *extra,
    ]


@pytest.fixture(scope="module")
def full_run(models, tmp_path_factory):
    base = tmp_path_factory.mktemp("eval_run")
    suite = write_suite(base / "suite.jsonl", SUITE_ROWS)
    result = CliRunner().invoke(main, eval_args(models, suite, base / "out", "--gate", "student.score >= 0.95 * teacher.score"))
    report = json.loads((base / "out" / "report.json").read_text())
    return result, report, base / "out"


def test_report_files_follow_the_umask_like_every_output(full_run):
    """report.json/.md/.png and outputs/*.jsonl are readable by the group and others under the
    usual umask 022, as corpus and model files are (they used to be created 0600)."""
    import stat

    _, _, out = full_run
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    files = [out / "report.json", out / "report.md", out / "report.png", *sorted((out / "outputs").glob("*.jsonl"))]
    assert len(files) >= 5
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == expected, (path, oct(path.stat().st_mode))


def test_report_structure_and_scores(full_run):
    result, report, out = full_run
    assert set(report["models"]) == {"teacher", "student", "empty", "broken"}
    for name in ("teacher", "student", "empty"):
        entry = report["models"][name]
        assert REPORT_KEYS <= set(entry), name
        assert entry["status"] == "ok" and entry["rows"] == 8
    teacher, student = report["models"]["teacher"], report["models"]["student"]
    assert teacher["score"] == 0.75 and teacher["score_ci"] == list(wilson_interval(6, 8))
    assert teacher["failures"] == {} and teacher["agreement"] == 1.0
    # agreement: the numeric:5% row matches (1), regex and numeric rows do not (0), and the four
    # free-form rows (exact, contains, python) score ROUGE-L F1 of "answer 41" vs "answer 42" = 0.5
    assert student["score"] == 0.25 and student["agreement"] == pytest.approx(3 / 8)
    assert report["suite"]["rows"] == 8 and report["suite"]["scorers"]["numeric"] == 2
    assert report["complete"] is True and report["created"]
    rows = [json.loads(line) for line in (out / "outputs" / "teacher.jsonl").read_text().splitlines()]
    assert rows[0]["output"] == "Answer: 42" and rows[0]["num_tokens"] == 10
    md = (out / "report.md").read_text()
    assert "| teacher | 0.750 [" in md and "![scores and speed](report.png)" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "teacher" in result.output and "score [95% CI]" in result.output  # the printed table


def test_speed_and_params_are_measured(full_run):
    _, report, _ = full_run
    for name in ("teacher", "student", "empty"):
        entry = report["models"][name]
        for key in ("tokens_per_s", "latency_p50_ms", "latency_p95_ms", "tokens_per_s_batch",
                    "latency_p50_ms_batch", "latency_p95_ms_batch", "params"):
            assert entry[key] > 0, (name, key)
        assert entry["latency_p95_ms"] >= entry["latency_p50_ms"]
        # 3 timed prompts fill one full batch of --batch-size 4; 3 rounds (the default), models in turn
        assert entry["speed"]["batch"]["batch_size"] == 4 and entry["speed"]["rounds"] == 3
        assert len(entry["speed"]["batch_1"]["tokens_per_s_rounds"]) == 3
        assert entry["tokens_per_s"] == sorted(entry["speed"]["batch_1"]["tokens_per_s_rounds"])[1]  # the median
    teacher = report["models"]["teacher"]["speed"]
    assert teacher["batch_1"]["tokens"] == 3 * 3 * 10  # rounds x prompts x ("Answer: 42" (9 tokens) + EOS)
    assert teacher["batch"]["tokens"] == 3 * 4 * 10
    assert report["models"]["empty"]["speed"]["batch_1"]["tokens"] == 3 * 3  # EOS only
    assert report["settings"]["speed_rounds"] == 3


def test_combine_speed_rounds_takes_the_median_and_pools_latencies():
    from distill.eval.generation import combine_speed_rounds

    def round_(b1, batch, latencies):
        return {"prompts": 2, "max_new_tokens": 8,
                "batch_1": {"tokens_per_s": b1, "latency_ms": latencies, "tokens": 10},
                "batch": {"tokens_per_s": batch, "latency_ms": latencies, "tokens": 40, "batch_size": 4}}

    speed = combine_speed_rounds([round_(100.0, 900.0, [10.0, 12.0]), round_(20.0, 1000.0, [50.0, 60.0]),
                                  round_(110.0, 300.0, [11.0, 13.0])])
    # one round under a noisy neighbour (20 tok/s, 300 tok/s batched) moves neither figure
    assert speed["batch_1"]["tokens_per_s"] == 100.0 and speed["batch"]["tokens_per_s"] == 900.0
    assert speed["batch_1"]["latency_p50_ms"] == 12.5 and speed["batch_1"]["tokens"] == 30
    assert speed["rounds"] == 3 and speed["batch"]["batch_size"] == 4


def test_empty_outputs_and_broken_model_are_recorded_not_fatal(full_run):
    result, report, _ = full_run
    empty = report["models"]["empty"]
    assert empty["score"] == 0.0 and empty["failures"] == {"empty_output": 8} and empty["failed_rows"] == 8
    assert empty["agreement"] == 0.0
    broken = report["models"]["broken"]
    assert broken["status"] == "failed" and "cannot load model: " in broken["error"] and broken["path"]
    assert broken["score"] is None
    assert "broken: FAILED: cannot load model" in result.output


def test_gate_failure_exit_code_and_printed_values(full_run):
    result, report, _ = full_run
    assert result.exit_code == EXIT_GATE_FAILED, result.output
    assert report["gate"]["passed"] is False
    assert report["gate"]["values"] == {"student.score": 0.25, "teacher.score": 0.75}
    assert "gate: student.score >= 0.95 * teacher.score -> FAILED (student.score = 0.2500, teacher.score = 0.7500)" in result.output


def test_kl_to_teacher_is_exact_full_vocabulary_kl(full_run, models):
    """With k >= vocab, KL(teacher || empty) = log V - H(p) (the empty model's distribution is
    uniform), and KL(teacher || teacher) = 0; checked against an independent forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.prompts import encode_prompt

    _, report, out = full_run
    assert abs(report["models"]["teacher"]["kl_to_teacher"]) < 1e-5
    teacher = AutoModelForCausalLM.from_pretrained(models["a42"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(models["a42"])
    vocab = teacher.config.vocab_size
    entropies = []
    for row in SUITE_ROWS:
        prompt = encode_prompt(tok, [{"role": "user", "content": row["prompt"]}])
        response = tok("Answer: 42", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].double()
        logp = torch.log_softmax(logits, -1)
        entropies += (-(logp.exp() * logp).sum(-1)).tolist()
    expected = math.log(vocab) - float(np.mean(entropies))
    assert report["models"]["empty"]["kl_to_teacher"] == pytest.approx(expected, rel=1e-4)
    assert report["models"]["empty"]["kl_tokens"] == 8 * 10
    assert report["models"]["student"]["kl_to_teacher"] > 0.1


def test_kl_with_small_top_k_is_a_lower_bound(models):
    import torch

    from distill.eval.generation import generate_greedy
    from distill.eval.kl import TeacherRef, kl_to_teacher
    from distill.eval.models import load_model
    from distill.prompts import encode_prompt

    teacher, tok = load_model(str(models["a42"]), torch.device("cpu"), torch.float32)
    student, _ = load_model(str(models["a41"]), torch.device("cpu"), torch.float32)
    prompts = [encode_prompt(tok, [{"role": "user", "content": r["prompt"]}]) for r in SUITE_ROWS[:4]]
    kls = []
    for k in (1000, 20, 3):
        gens = generate_greedy(teacher, tok, prompts, batch_size=4, max_new_tokens=12, capture_top_k=k)
        kls.append(kl_to_teacher(student, TeacherRef("t", [g.text for g in gens], "fp", gens), batch_size=2)[0])
    assert kls[0] >= kls[1] >= kls[2] > 0
    assert kls[1] == pytest.approx(kls[0], rel=0.2)


def test_bad_gate_fails_before_any_model_runs(models, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", SUITE_ROWS)
    result = CliRunner().invoke(main, eval_args(models, suite, tmp_path / "out", "--gate", "student.scroe > 0.5"))
    assert result.exit_code == 2
    assert "unknown metric 'scroe'" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_suite_and_bad_model_spec_fail_before_any_model_runs(models, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", SUITE_ROWS[:2] + ['{"prompt": "x", "reference": "1", "scorer": "fuzzy"}'])
    result = CliRunner().invoke(main, eval_args(models, suite, tmp_path / "out"))
    assert result.exit_code == 2 and f"{suite}:3: unknown scorer 'fuzzy'" in result.output
    good = write_suite(tmp_path / "good.jsonl", SUITE_ROWS[:2])
    for spec, message in (("student", "expected NAME=PATH"), ("2x=/tmp", "NAME must be letters"),
                          (f"x={tmp_path}/nope/nothing", "is not a model directory")):
        result = CliRunner().invoke(main, ["eval", "--model", spec, "--suite", str(good), "--out", str(tmp_path / "o2")])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(main, ["eval", "--model", f"m={models['a42']}", "--suite", str(good),
                                       "--out", str(tmp_path / "o2"), "--teacher", "techer"])
    assert result.exit_code == 2 and "--teacher 'techer' is neither a --model name (m)" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


def test_judge_rows_and_a_teacher_given_as_a_directory(models, tmp_path):
    """--teacher as a model dir (not a --model) goes through the Teacher protocol (HF backend);
    judge rows are scored by an LLM judge that always replies "Score: 4"."""
    suite = write_suite(tmp_path / "suite.jsonl", SUITE_ROWS[:3] + [
        {"prompt": "Explain.", "scorer": "judge", "rubric": "be correct"},
        {"prompt": "Explain more.", "reference": "because", "scorer": "judge"},
    ])
    result = CliRunner().invoke(main, [
        "eval", "--model", f"student={models['a41']}", "--model", f"empty={models['empty']}",
        "--suite", str(suite), "--out", str(tmp_path / "out"), "--teacher", str(models["a42"]),
        "--judge", str(models["judge4"]), "--max-new-tokens", "12", "--batch-size", "4", "--speed-prompts", "2",
        "--gate", "student.score > 0.2 and student.agreement < 0.5",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    student, empty = report["models"]["student"], report["models"]["empty"]
    # regex 41 vs 42 wrong, numeric wrong, exact wrong; both judge rows 0.75.
    assert student["score"] == pytest.approx(1.5 / 5) and student["ci_method"] == "bootstrap"
    assert student["score_by_scorer"]["judge"] == 0.75
    # agreement: regex and numeric rows 0, the exact row and both judge rows ROUGE-L 0.5
    assert student["agreement"] == pytest.approx(1.5 / 5) and student["kl_to_teacher"] > 0.1
    assert empty["failures"] == {"empty_output": 5}
    rows = [json.loads(line) for line in (tmp_path / "out" / "outputs" / "student.jsonl").read_text().splitlines()]
    assert rows[3]["judge_reply"] == "Score: 4"


def test_judge_rows_need_a_judge(models, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", [{"prompt": "Explain.", "scorer": "judge"}])
    result = CliRunner().invoke(main, ["eval", "--model", f"m={models['a42']}", "--suite", str(suite), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "give --judge or --teacher" in result.output


def test_gate_metrics_are_report_fields(full_run):
    _, report, _ = full_run
    assert set(GATE_METRICS) <= set(report["models"]["teacher"])


def test_model_failure_alone_exits_4(models, tmp_path):
    suite = write_suite(tmp_path / "suite.jsonl", SUITE_ROWS[:2])
    result = CliRunner().invoke(main, [
        "eval", "--model", f"good={models['a42']}", "--model", f"broken={models['broken']}",
        "--suite", str(suite), "--out", str(tmp_path / "out"), "--max-new-tokens", "12", "--speed-prompts", "1",
    ])
    assert result.exit_code == EXIT_MODEL_FAILED, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"]["good"]["score"] == 1.0 and report["models"]["good"]["agreement"] is None
    assert report["models"]["broken"]["status"] == "failed"


def test_model_served_by_a_teacher_backend(models, tmp_path, monkeypatch):
    """A --model whose recipe names a serving backend (vLLM, HTTP) is run through the Teacher
    protocol: scored, timed, its size read from safetensors headers, its top-k used as the
    teacher's side of other models' KL; it has no KL of its own."""
    import distill.eval.models
    import distill.eval.runner
    from distill.eval import EvalConfig, run
    from distill.eval.models import count_params, load_model

    real_resolve = distill.eval.models.resolve_model
    served = str(models["a42"])

    def resolve(spec):
        return (spec, "vllm") if spec == served else real_resolve(spec)

    monkeypatch.setattr(distill.eval.models, "resolve_model", resolve)
    monkeypatch.setattr(distill.eval.runner, "resolve_model", resolve)
    suite = write_suite(tmp_path / "suite.jsonl", SUITE_ROWS)
    report = run(EvalConfig(
        models=(f"teacher={served}", f"student={models['a41']}"), suite=str(suite), out=str(tmp_path / "out"),
        teacher="teacher", max_new_tokens=12, batch_size=4, speed_prompts=2, kl_top_k=1000,
    ))
    teacher, student = report["models"]["teacher"], report["models"]["student"]
    assert teacher["via"] == "hf" and student["via"] == "transformers"  # HFTeacher stands in for vLLM here
    assert teacher["score"] == 0.75 and teacher["agreement"] == 1.0 and teacher["tokens_per_s"] > 0
    assert teacher["kl_to_teacher"] is None and "exposes no full next-token distribution" in teacher["errors"]["kl"]
    model, _ = load_model(served, __import__("torch").device("cpu"), __import__("torch").float32)
    assert teacher["params"] == count_params(model)  # untied embeddings: both matrices in the file
    assert student["score"] == 0.25 and student["kl_to_teacher"] > 0.1


def test_model_spec_resolution(tmp_path):
    from distill.eval.models import resolve_model

    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "run")) == (str(tmp_path / "run" / "final"), "hf")
    assert resolve_model(str(tmp_path / "run" / "final")) == (str(tmp_path / "run" / "final"), "hf")
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", "hf")
    recipe = tmp_path / "served.yaml"
    recipe.write_text("model: Qwen/Qwen2.5-72B-Instruct\nbackend: vllm\n")
    assert resolve_model(str(recipe)) == ("Qwen/Qwen2.5-72B-Instruct", "vllm")
    with pytest.raises(ConfigError, match="names no 'model' to evaluate"):
        resolve_model("tiny-test")  # a random-init student recipe: nothing trained to evaluate
    with pytest.raises(ConfigError, match="not a model directory"):
        resolve_model(str(tmp_path / "a" / "b"))


def test_exit_code_precedence():
    from distill.eval import EXIT_OK, exit_code

    ok = {"models": {"a": {"status": "ok"}}, "gate": None}
    assert exit_code(ok) == EXIT_OK
    assert exit_code({**ok, "teacher_error": "teacher 'x' failed"}) == EXIT_MODEL_FAILED
    failed = {"models": {"a": {"status": "ok"}, "b": {"status": "failed"}}, "gate": {"passed": True}}
    assert exit_code(failed) == EXIT_MODEL_FAILED
    assert exit_code({**failed, "gate": {"passed": False}}) == EXIT_GATE_FAILED


def test_chart_handles_ci_bounds_at_the_ends(tmp_path):
    from distill.eval.report import plot_chart

    assert wilson_interval(0, 600)[0] == 0.0 and wilson_interval(600, 600)[1] == 1.0
    entry = {"status": "ok", "tokens_per_s": 10.0, "tokens_per_s_batch": 50.0}
    report = {
        "suite": {"name": "s"}, "settings": {"batch_size": 4},
        "models": {
            "zero": {**entry, "score": 0.0, "score_ci": [4e-19, 0.006]},  # a bound a hair past the mean
            "one": {**entry, "score": 1.0, "score_ci": [0.99, 1.0 - 1e-17]},
            "failed": {"status": "failed", "score": None, "score_ci": None},
        },
    }
    plot_chart(report, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_agreement_on_free_form_answers_is_rouge_l():
    from distill.eval.scorers import agreement_with_teacher, lcs_length, parse_scorer, rouge_l_f1

    assert lcs_length("a b c d e".split(), "a c e x".split()) == 3
    assert lcs_length([], ["a"]) == 0 and lcs_length(["a"] * 200, ["a"] * 150) == 150
    assert rouge_l_f1("the cat sat".split(), "the cat sat".split()) == 1.0
    assert rouge_l_f1("the cat sat down".split(), "the cat sat".split()) == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    exact = parse_scorer("exact", "s:1", [Path(".")])
    text = "Paris is the capital of France, on the Seine."
    assert agreement_with_teacher(exact, text, text) == 1.0
    assert 0.5 < agreement_with_teacher(exact, "The capital of France is Paris.", text) < 1.0
    assert agreement_with_teacher(exact, "Bananas.", text) == 0.0
    assert agreement_with_teacher(exact, "anything", "   ") is None  # the teacher gave nothing: not counted
    numeric = parse_scorer("numeric", "s:1", [Path(".")])
    assert agreement_with_teacher(numeric, "so 42.", "The answer is 42") == 1.0
    assert agreement_with_teacher(numeric, "so 41.", "The answer is 42") == 0.0
