"""Prompt augmentation: planted inputs for every filter, dedup, decontamination, the judge,
determinism, resume by round, and bad input. The teacher is a fake implementing the protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.augment import (
    DEFAULT_META_PROMPT,
    REJECT_REASONS,
    AugmentConfig,
    augment_prompts,
    broken_format,
    is_refusal,
    parse_judge_score,
    parse_prompts,
    resolve_templates,
)
from distill.config import ConfigError
from distill.prompts import PromptRecord, encode_prompt, prompt_hash
from tests.augment.fake_teacher import FakeTeacher, examples_in, random_responder

SEED_TEXTS = [
    "Plan a three day trip to Lisbon for two people on a small budget, with one museum per day.",
    "Write a haiku about autumn leaves falling on a quiet river.",
    "Explain how a bicycle gear system trades speed for force when climbing a hill.",
    "Summarize the causes of the French Revolution in five bullet points for a history class.",
]
SUITE_PROMPT = "Tom has 12 red apples and 7 green apples in his basket at the market today. How many apples does Tom have?"


def make_seeds(texts=SEED_TEXTS) -> list[PromptRecord]:
    out = []
    for i, text in enumerate(texts):
        messages = ({"role": "user", "content": text},)
        out.append(PromptRecord(id=f"seed-{i}", messages=messages, origin={"source": "seed", "line": i + 1}))
    return out


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def cfg(**kw) -> AugmentConfig:
    kw.setdefault("progress", False)
    return AugmentConfig(**kw)


# --------------------------------------------------------------------------------------------
# parsing


def test_parse_prompts_formats():
    out = "Sure! Here you go.\nPrompt: What is 3+4?\n\n**Prompt 2:** Name a red fruit.\n### New prompt 3\nLine one\nline two\nPrompt:\n"
    assert parse_prompts(out) == ["What is 3+4?", "Name a red fruit.", "Line one\nline two", ""]
    assert parse_prompts("1. Add 3 and 4.\n2) Name three colors\nplease") == ["Add 3 and 4.", "Name three colors\nplease"]
    # A numbered list inside a single prompt is not split when "Prompt:" markers are present.
    assert parse_prompts("Prompt: Do this:\n1. mix\n2. bake") == ["Do this:\n1. mix\n2. bake"]
    assert parse_prompts('  "Tell me   a joke."  ') == ["Tell me a joke."]
    assert parse_prompts("Prompt engineering is fun. Explain why.") == ["Prompt engineering is fun. Explain why."]


def test_junk_detectors():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("As an AI language model, I cannot write this.")
    assert is_refusal("I cannot help with that request.") and is_refusal("I won't be able to write that.")
    assert is_refusal("Sorry, but that is not something I can do.")
    assert not is_refusal("Sorting algorithms: explain merge sort to a beginner.")
    assert not is_refusal("I can't decide between two laptops; help me compare them.")
    assert not is_refusal("Sorry to bother you: how do I reset my router?")
    assert broken_format("Describe <|im_start|> tokens") == "special token in text"
    assert broken_format("bad \ufffd byte") is not None
    assert broken_format("```python\nprint(1)") == "unclosed code fence"
    assert broken_format("```python\nprint(1)\n```\nWhat does this print?") is None
    assert broken_format("assistant\nHow many eggs are left?") == "chat role header in text"
    assert broken_format("Assistant pay rates: how do they compare?") is None
    assert parse_judge_score("Score: 4") == 4 and parse_judge_score("10/10") is None and parse_judge_score("n/a") is None


# --------------------------------------------------------------------------------------------
# every filter, planted


PLANTED = [
    ("", "empty"),
    ("Describe the <|im_start|> tokens of a chat model.", "broken_format"),
    ("Hi there", "too_short"),
    ("I'm sorry, but I cannot write new prompts for this.", "refusal"),
    ("Write 3 new prompts of the same kind. Each new prompt must be self-contained.", "assistant_voice"),
    ("Here are 3 new prompts for you about travel and cooking", "assistant_voice"),
    ("Plan a trip to Rome: it must differ from the examples and from the other plans.", "meta_prompt_echo"),
    ("Write a haiku about autumn leaves falling on a quiet river.", "seed_copy"),
    ("Please help: write a haiku about autumn leaves falling on a quiet river. Thanks!", "seed_copy"),
    ("Compose a limerick about a cat who learns to play the piano at midnight.", None),
    ("COMPOSE a limerick about a cat who learns to   play the piano at midnight.", "exact_duplicate"),
    ("Describe " + " ".join(f"item{i}" for i in range(150)) + ".", "too_long"),
    ("Explain how a bicycle gear system trades speed for force when climbing a steep hill.", "near_duplicate"),
    ("Compose a limerick about a cat who learns to play the piano at midnight today.", "near_duplicate"),
    ("Here is a puzzle: Tom has 12 red apples and 7 green apples in his basket at the market today. What fraction is red?", "contaminated"),
    ("Describe the water cycle to a ten year old using a story about a raindrop.", None),
    ("Ada has 12 apples and Bo has 30. Ada buys 5 apples on Monday. How many apples does Ada have now?", None),
    ("Cy has 47 apples and Di has 8. Cy buys 13 apples on Monday. How many apples does Cy have now?", None),
    ("\u041e\u043f\u0438\u0448\u0438\u0442\u0435 \u043a\u0440\u0443\u0433\u043e\u0432\u043e\u0440\u043e\u0442 \u0432\u043e\u0434\u044b \u0434\u043b\u044f \u0440\u0435\u0431\u0451\u043d\u043a\u0430 please.", "off_script"),
    ("Tell me why the sky is blue and why the sea is blue and why the grass is green and why the sun is hot "
     "and why the moon is cold at night and why owls hunt in the dark", "length_outlier"),
    ("Write ZQX VRKT PLMW GHJQ KLNX BRRT WXYZ QQRP", "improbable"),
    ("The weather was lovely in the park yesterday afternoon.", "not_a_request"),
    ("Sushi rolls: what makes the rice sticky, and why is it seasoned with vinegar?", None),
    ("How many legs does a spider have?\nAnswer: eight legs", "assistant_voice"),
    ("Why do cats purr when they are happy?\nThis prompt asks about animal behaviour.", "assistant_voice"),
    ("Why do owls hunt at night?\nWhy do bats sleep upside down?", "length_outlier"),
    ("Explain how \u03c0 relates a circle's circumference to its diameter, with one worked example.", None),
    ("Tell me about the history of", "truncated"),
]


def test_every_filter_planted(tokenizer, tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"prompt": SUITE_PROMPT, "reference": "19"}) + "\n")
    output = "\n".join("Prompt: " + text for text, _ in PLANTED)
    teacher = FakeTeacher(tokenizer, lambda *_: (output, "length"))
    config = cfg(num_prompts=100, few_shot=2, requests_per_round=1, max_rounds=1, max_prompt_tokens=120, decontaminate=str(suite))
    result = augment_prompts(teacher, make_seeds(), config)

    expected = {reason: 0 for reason in REJECT_REASONS}
    for _, reason in PLANTED:
        if reason:
            expected[reason] += 1
    assert result.stats["rejected"] == expected
    kept = [text for text, reason in PLANTED if reason is None]
    assert [r.prompt for r in result.records] == kept
    assert result.stats["accepted"] == len(kept) and result.stats["candidates"] == len(PLANTED)
    assert result.stats["stopped"] == "round_budget_spent"
    by_text = {r["text"]: r["reason"] for r in result.rejected}
    assert by_text[PLANTED[12][0]] == "near_duplicate"
    assert all(call[1].top_k_logprobs == 0 for call in teacher.calls)
    for record in result.records:
        assert record.origin["source"] == "synthetic" and record.origin["round"] == 1
        assert len(record.origin["parents"]) == 2 and set(record.origin["parents"]) <= {s.id for s in make_seeds()}
        assert record.id == prompt_hash(record.messages)


def test_too_long_leaves_room_for_response_tokens(tokenizer):
    seeds = make_seeds()
    long_prompt = "Describe " + " ".join(f"thing number {i}" for i in range(40))
    short_prompt = "Describe a sunset over the harbour in three sentences."
    teacher = FakeTeacher(tokenizer, lambda *_: f"Prompt: {long_prompt}\nPrompt: {short_prompt}", max_context=700)
    num_long = len(encode_prompt(tokenizer, [{"role": "user", "content": long_prompt}]))
    # The long prompt fits the context alone but not with the reserved response budget.
    assert num_long < 700 and num_long + 650 > 700
    config = cfg(num_prompts=10, few_shot=1, requests_per_round=1, max_rounds=1, max_new_tokens=650, generation_max_tokens=200)
    result = augment_prompts(teacher, seeds, config)
    assert [r.prompt for r in result.records] == [short_prompt]
    assert result.stats["rejected"]["too_long"] == 1


# --------------------------------------------------------------------------------------------
# dedup


def test_near_duplicate_index_catches_planted_and_keeps_distinct():
    from distill.dedup import NearDuplicateIndex, near_duplicate_pairs

    base = [
        "Write a short story about a lighthouse keeper who finds a message in a bottle during a winter storm.",
        "List five practical tips for keeping houseplants alive in a dark apartment during the winter months.",
        "Explain the difference between a stack and a queue, with one everyday example of each structure.",
    ]
    near = [
        "Write a short story about a lighthouse keeper who finds a message in a bottle during a summer storm.",
        "Please list five practical tips for keeping houseplants alive in a dark apartment during the winter months.",
        "Explain the difference between a stack and a queue, with one everyday example of each data structure.",
    ]
    distinct = [
        "Write a short story about a baker who wins a village contest with a strange cake.",
        "Give me three tips for a first marathon.",
        "Explain the difference between TCP and UDP for a video call application.",
    ]
    index = NearDuplicateIndex(0.7)
    for i, text in enumerate(base):
        index.add(f"b{i}", text)
    for i, text in enumerate(near):
        match = index.query(text)
        assert match is not None and match[0] == f"b{i}" and match[1] >= 0.7
    for text in distinct:
        assert index.query(text) is None
    index.remove("b0")
    assert index.query(near[0]) is None
    # The brute-force check agrees: 3 planted pairs, nothing else.
    assert near_duplicate_pairs(base + near + distinct) == 3


def test_dedup_across_rounds_and_against_seeds(tokenizer):
    seeds = make_seeds()
    first = "Describe a rainy afternoon in a busy train station from the point of view of a pigeon."
    # Round 1 accepts `first`; round 2 re-writes it (exact and near) and a seed paraphrase.
    outputs = {
        1: f"Prompt: {first}",
        2: "\n".join([
            "Prompt: " + first.upper(),
            "Prompt: Describe a rainy afternoon in a busy train station from the point of view of an old pigeon.",
            "Prompt: Plan a three day trip to Lisbon for two people on a small budget, with one museum each day.",
            "Prompt: Suggest a name for a bakery that sells only sourdough bread and rye rolls.",
        ]),
    }
    teacher = FakeTeacher(tokenizer, lambda _t, req, _p: outputs[int(req.key.split("-r")[1].split("-")[0])])
    result = augment_prompts(teacher, seeds, cfg(num_prompts=10, few_shot=2, requests_per_round=1, max_rounds=2))
    assert [r.prompt for r in result.records] == [first, "Suggest a name for a bakery that sells only sourdough bread and rye rolls."]
    assert result.stats["rejected"]["exact_duplicate"] == 1 and result.stats["rejected"]["near_duplicate"] == 2
    assert [r.origin["round"] for r in result.records] == [1, 2]


# --------------------------------------------------------------------------------------------
# decontamination


def test_decontamination_ngram_boundary(tmp_path, monkeypatch):
    from distill.decontaminate import NgramIndex, load_suite_index, resolve_suite

    index = NgramIndex([SUITE_PROMPT, "Name two rivers."], n=13)
    words13 = "tom has 12 red apples and 7 green apples in his basket at"
    assert index.match(f"Story time: {words13} noon.") is not None
    words12 = "Tom has 12 red apples and 7 green apples in his basket"
    assert index.match(f"Story time: {words12} noon.") is None
    # Punctuation and case do not hide an overlap.
    assert index.match("TOM has 12 red-apples and 7 green apples, in his basket at the market") is not None
    # A suite prompt shorter than n words contaminates a text containing all of it.
    assert index.match("Please name two rivers in Spain.") is not None
    assert NgramIndex([SUITE_PROMPT], n=5).match("red apples and 7 green") is not None

    # Suites by name from the shipped eval/ folder, by file, by folder; unknown names fail clearly.
    shipped = tmp_path / "eval"
    (shipped / "mysuite").mkdir(parents=True)
    (shipped / "mysuite" / "a.jsonl").write_text(json.dumps({"prompt": SUITE_PROMPT}) + "\n\n")
    (shipped / "other.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Name two rivers."}]}) + "\n")
    monkeypatch.setattr("distill.recipes.shipped_dir", lambda folder: shipped)
    assert resolve_suite("mysuite") == [shipped / "mysuite" / "a.jsonl"]
    assert resolve_suite("other") == [shipped / "other.jsonl"]
    _, files, count = load_suite_index(str(shipped / "other.jsonl"))
    assert count == 1 and files == [shipped / "other.jsonl"]
    with pytest.raises(ConfigError, match=r"unknown suite 'nope'.*mysuite, other"):
        resolve_suite("nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n{not json\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: invalid JSON"):
        load_suite_index(str(bad))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"nofield.jsonl:1: .*'prompt'"):
        load_suite_index(str(nofield))


def test_unknown_suite_is_a_clear_error(tokenizer):
    teacher = FakeTeacher(tokenizer, random_responder())
    with pytest.raises(ConfigError, match=r"--decontaminate: unknown suite 'no-such-suite'"):
        augment_prompts(teacher, make_seeds(), cfg(num_prompts=5, decontaminate="no-such-suite"))
    assert teacher.calls == []


# --------------------------------------------------------------------------------------------
# judge


def test_judge_keeps_prompts_at_or_above_threshold(tokenizer):
    good = "Explain photosynthesis to a curious seven year old, excellent detail please."
    fine = "Write a four line poem about a lost umbrella on a windy day."
    poor = "Describe something about stuff and things in general, poor request."
    garbled = "Garbled words tumble here: is there any clear question in them at all?"

    def respond(prompt_text, request, params):
        if "Reply with the score only" in prompt_text:
            assert params.temperature == 0 and params.max_new_tokens == 8
            assert "RUBRIC-MARKER" in prompt_text
            if "photosynthesis" in prompt_text:
                return "5"
            if "umbrella" in prompt_text:
                return "Score: 4"
            if "stuff and things" in prompt_text:
                return "2"
            return "I cannot say."
        return "\n".join(f"Prompt: {t}" for t in (good, fine, poor, garbled))

    teacher = FakeTeacher(tokenizer, respond)
    from distill.teachers import TeacherRecipe

    recipe = TeacherRecipe.from_mapping({"model": "m", "augment": {"judge_rubric": "RUBRIC-MARKER: be strict."}},
                                        "teachers/x.yaml")
    config = cfg(num_prompts=10, few_shot=1, requests_per_round=1, max_rounds=1, judge_threshold=4)
    result = augment_prompts(teacher, make_seeds(), config, recipe=recipe)
    assert [r.prompt for r in result.records] == [good, fine]
    assert [r.origin["judge_score"] for r in result.records] == [5, 4]
    assert result.stats["rejected"]["judge_below_threshold"] == 1 and result.stats["rejected"]["judge_unparseable"] == 1
    assert result.stats["timing_s"]["judge"] > 0


# --------------------------------------------------------------------------------------------
# determinism, lineage, resume


def _summary(result):
    return [(r.id, r.prompt, json.dumps(r.origin, sort_keys=True)) for r in result.records], result.stats["rejected"]


def test_deterministic_under_seed_and_lineage(tokenizer):
    seeds = make_seeds()
    config = cfg(num_prompts=40, few_shot=2, synthetic_fraction=0.5, requests_per_round=4, seed=7)
    first = augment_prompts(FakeTeacher(tokenizer, random_responder()), seeds, config)
    second = augment_prompts(FakeTeacher(tokenizer, random_responder()), seeds, config)
    assert _summary(first) == _summary(second)
    assert first.stats["accepted"] == 40 and first.stats["stopped"] == "target_reached"
    other = augment_prompts(FakeTeacher(tokenizer, random_responder()), seeds, cfg(**{**config.__dict__, "seed": 8}))
    assert _summary(other)[0] != _summary(first)[0]

    # Lineage: parents are the examples shown; later rounds mix in accepted synthetic prompts.
    ids = {r.id for r in first.records}
    seed_ids = {s.id for s in seeds}
    for record in first.records:
        parents = record.origin["parents"]
        assert len(parents) == 2 and set(parents) <= seed_ids | ids
    assert any(set(r.origin["parents"]) & ids for r in first.records if r.origin["round"] > 1)
    assert all(set(r.origin["parents"]) <= seed_ids for r in first.records if r.origin["round"] == 1)
    # The examples really come from the chosen records (few-shot draw is what lineage says).
    teacher = FakeTeacher(tokenizer, random_responder())
    seen = []
    orig = teacher.responder
    teacher.responder = lambda text, req, p: seen.append(examples_in(text)) or orig(text, req, p)
    augment_prompts(teacher, seeds, cfg(num_prompts=3, few_shot=3, requests_per_round=1, max_rounds=1))
    assert len(seen[0]) == 3 and set(seen[0]) <= set(SEED_TEXTS)


def test_resume_by_round_equals_uninterrupted(tokenizer, tmp_path):
    seeds = make_seeds()
    config = cfg(num_prompts=30, few_shot=2, synthetic_fraction=0.5, requests_per_round=3, seed=3)
    reference = augment_prompts(FakeTeacher(tokenizer, random_responder()), seeds, config)
    assert reference.stats["rounds"] >= 3

    base = random_responder()

    def crash_in_round_3(text, request, params):
        if request.key.startswith("augment-r3-"):
            raise RuntimeError("killed")
        return base(text, request, params)

    with pytest.raises(RuntimeError, match="killed"):
        augment_prompts(FakeTeacher(tokenizer, crash_in_round_3), seeds, config, work_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["round-00001.json", "round-00002.json"]

    teacher = FakeTeacher(tokenizer, random_responder())
    resumed = augment_prompts(teacher, seeds, config, work_dir=tmp_path)
    assert _summary(resumed) == _summary(reference)
    assert resumed.stats["resumed_rounds"] == 2
    assert teacher.generated_requests == 3 * (reference.stats["rounds"] - 2)
    # Nothing left to do: a re-run generates nothing and returns the same prompts.
    again = FakeTeacher(tokenizer, random_responder())
    assert _summary(augment_prompts(again, seeds, config, work_dir=tmp_path)) == _summary(reference)
    assert again.generated_requests == 0

    with pytest.raises(ConfigError, match=r"round-00001.json: .*different inputs or settings"):
        augment_prompts(FakeTeacher(tokenizer, random_responder()), seeds, cfg(**{**config.__dict__, "near_dup_threshold": 0.8}), work_dir=tmp_path)


def test_round_budget_spent_is_reported(tokenizer):
    teacher = FakeTeacher(tokenizer, lambda *_: "I'm sorry, I cannot do that.")
    result = augment_prompts(teacher, make_seeds(), cfg(num_prompts=5, few_shot=2, requests_per_round=2, max_rounds=3))
    assert result.stats["stopped"] == "round_budget_spent" and result.stats["rounds"] == 3
    assert result.stats["accepted"] == 0 and result.stats["rejected"]["refusal"] == 6


# --------------------------------------------------------------------------------------------
# bad input


def test_fewer_seeds_than_few_shot(tokenizer):
    teacher = FakeTeacher(tokenizer, random_responder())
    with pytest.raises(ConfigError, match=r"--few-shot: 5 examples per request but only 4 seed"):
        augment_prompts(teacher, make_seeds(), cfg(num_prompts=5, few_shot=5))


def test_meta_prompt_placeholders_validated(tokenizer):
    from distill.teachers import TeacherRecipe

    def recipe(augment):
        return TeacherRecipe.from_mapping({"model": "m", "augment": augment}, "teachers/mine.yaml")

    with pytest.raises(ConfigError, match=r"teachers/mine.yaml: augment: meta_prompt: template has no \{examples\} placeholder"):
        resolve_templates(cfg(), recipe({"meta_prompt": "Write {num_new} new prompts please."}))
    with pytest.raises(ConfigError, match=r"unknown placeholder \{count\}"):
        resolve_templates(cfg(), recipe({"meta_prompt": "Examples: {examples}. Write {count} more."}))
    with pytest.raises(ConfigError, match=r"config: judge_prompt: template has no \{prompt\}"):
        resolve_templates(cfg(judge_prompt="Rate it: {rubric}"))
    with pytest.raises(ConfigError, match=r"unknown key 'augment.metaprompt'"):
        resolve_templates(cfg(), recipe({"metaprompt": "x"}))
    with pytest.raises(ConfigError, match=r"invalid template"):
        resolve_templates(cfg(meta_prompt="{examples} and a stray { brace"))
    # A valid override is used; literal braces are allowed escaped.
    template = "JSON like {{\"a\": 1}} then:\n{examples}\nMore please."
    teacher = FakeTeacher(tokenizer, lambda text, *_: f"Prompt: Count the {text.count('JSON like {')} braces in the meta prompt here.")
    result = augment_prompts(teacher, make_seeds(), cfg(num_prompts=1, few_shot=1, max_rounds=1, meta_prompt=template))
    assert result.records[0].prompt == "Count the 1 braces in the meta prompt here."
    assert resolve_templates(cfg()).meta_prompt == DEFAULT_META_PROMPT


def test_meta_prompt_that_cannot_fit_is_a_clear_error(tokenizer):
    teacher = FakeTeacher(tokenizer, random_responder(), max_context=300)
    with pytest.raises(ConfigError, match=r"--generation-max-tokens: no meta-prompt fits"):
        augment_prompts(teacher, make_seeds(), cfg(num_prompts=5, few_shot=2, generation_max_tokens=250, max_new_tokens=64))


def test_config_validation():
    with pytest.raises(ValueError, match="--near-dup-threshold"):
        AugmentConfig(near_dup_threshold=0)
    with pytest.raises(ValueError, match="--shingle"):
        AugmentConfig(shingle="sentence")
    with pytest.raises(ValueError, match="--judge-threshold"):
        AugmentConfig(judge_threshold=6)


REAL_SHAPES = {
    "preamble_numbered": "Here are 5 new prompts:\n\n1. What is the boiling point of water at sea level?\n"
                         "2. Name three rivers in Africa.\n3. **How do vaccines train the immune system?**\n"
                         "4. \"Write a haiku about snow.\"\n5. Convert 5 kilometres to miles.",
    "numbered_postamble": "Sure! Here you go:\n1) What is the boiling point of water at sea level?\n"
                          "2) Name three rivers in Africa.\n3) How do vaccines train the immune system?\n"
                          "4) Write a haiku about snow.\n5) Convert 5 kilometres to miles.\n\n"
                          "Let me know if you would like more prompts!",
    "bullets": "New prompts:\n- What is the boiling point of water at sea level?\n* Name three rivers in Africa.\n"
               "\u2022 How do vaccines train the immune system?\n- Write a haiku about snow.\n"
               "- Convert 5 kilometres to miles.",
    "json": '["What is the boiling point of water at sea level?", "Name three rivers in Africa.", '
            '"How do vaccines train the immune system?", "Write a haiku about snow.", "Convert 5 kilometres to miles."]',
    "fenced_json": "Here is the JSON you asked for:\n```json\n[\n  {\"prompt\": \"What is the boiling point of water at sea level?\"},\n"
                   "  {\"prompt\": \"Name three rivers in Africa.\"},\n  {\"prompt\": \"How do vaccines train the immune system?\"},\n"
                   "  {\"prompt\": \"Write a haiku about snow.\"},\n  {\"prompt\": \"Convert 5 kilometres to miles.\"}\n]\n```\nEnjoy!",
    "labels": "Prompt 1: What is the boiling point of water at sea level?\nPrompt 2: Name three rivers in Africa.\n"
              "Prompt 3: How do vaccines train the immune system?\nPrompt 4: Write a haiku about snow.\n"
              "Prompt 5: Convert 5 kilometres to miles.",
}
EXPECTED_ITEMS = ["What is the boiling point of water at sea level?", "Name three rivers in Africa.",
                  "How do vaccines train the immune system?", "Write a haiku about snow.", "Convert 5 kilometres to miles."]


@pytest.mark.parametrize("shape", list(REAL_SHAPES))
def test_real_answer_shapes_recover_every_item(shape):
    """The ways instruct models actually answer "write 5 new prompts": every item comes back,
    without the preamble, postamble, list markers, quotes, bold or fences."""
    assert parse_prompts(REAL_SHAPES[shape]) == EXPECTED_ITEMS


def test_a_single_prompt_stays_whole():
    assert parse_prompts("Explain how a bicycle gear works.") == ["Explain how a bicycle gear works."]
    assert parse_prompts("[1, 2, 3] is a list; what is its sum?") == ["[1, 2, 3] is a list; what is its sum?"]


def test_judge_score_from_log_probs():
    """The rating is the expectation over the digits 1-5 at the first position where they hold
    at least half the top-k mass; a model that would not write a clean digit still ranks them."""
    from distill.augment import expected_judge_score
    from distill.teachers.base import TeacherOutput
    from tests.augment.fake_teacher import CharTokenizer

    tok = CharTokenizer()

    def output(steps):
        ids = np.array([[ord(c) for c, _ in step] for step in steps], dtype=np.int32)
        lps = np.log(np.array([[p for _, p in step] for step in steps], dtype=np.float32))
        return TeacherOutput(key="judge-x", prompt_ids=np.zeros(1, np.int32), response_ids=ids[:, 0], topk_ids=ids,
                             topk_logprobs=lps, sampled_logprobs=lps[:, 0], finish_reason="stop", text="")

    # position 0 is "Score:"-like text; position 1 is the rating: 4 with 0.6, 5 with 0.3, 2 with 0.1
    score = expected_judge_score(output([[("S", 0.9), ("4", 0.05), ("x", 0.05)], [("4", 0.6), ("5", 0.3), ("2", 0.1)]]), tok)
    assert score == pytest.approx(4.1)
    assert expected_judge_score(output([[("a", 0.7), ("b", 0.3)]]), tok) is None  # no rating anywhere
    no_logprobs = TeacherOutput(key="k", prompt_ids=np.zeros(1, np.int32), response_ids=np.zeros(1, np.int32), topk_ids=None,
                                topk_logprobs=None, sampled_logprobs=None, finish_reason="stop", text="4")
    assert expected_judge_score(no_logprobs, tok) is None


@pytest.mark.parametrize("text,voice", [
    ("I'm ready to assist. What would you like to know about the moon?", True),
    ("Sure thing! Below are some example questions you could ask.", True),
    ("Explain photosynthesis. Let me know if you need more detail.", True),
    ("Write 5 new prompts with the same theme as the examples above.", True),
    ("Give me three similar prompts about dogs.", True),
    ("Explain how vaccines train the immune system.", False),
    ("Write a short story about a lighthouse keeper who finds a message in a bottle.", False),
    ("What questions should I ask at a job interview?", False),
])
def test_assistant_voice_anywhere(text, voice):
    from distill.augment import is_assistant_voice

    assert is_assistant_voice(text) is voice


# --------------------------------------------------------------------------------------------
# the output contract and the seed-relative filters


def test_json_answers_complete_partial_and_primed():
    from distill.augment import JSON_ANSWER_PREFIX, parse_answer, render_meta_prompt

    # what a primed small model writes: the rest of the array, labels and numbers inside strings
    assert parse_answer('4. What is 7 cubed?", "Prompt 2: Name a red fruit.", "Why is snow white?"]', JSON_ANSWER_PREFIX) == [
        "What is 7 cubed?", "Name a red fruit.", "Why is snow white?"]
    # cut off by the token budget: the complete strings, then the unfinished one (counted truncated)
    assert parse_answer('Explain tides.", "List three birds.", "What is the capi', JSON_ANSWER_PREFIX) == [
        "Explain tides.", "List three birds.", "What is the capi"]
    # a model that ignores the priming is read as whatever it wrote
    assert parse_answer("Prompt: Name a planet.\nPrompt: Define gravity.", JSON_ANSWER_PREFIX) == ["Name a planet.", "Define gravity."]
    # an array that breaks off into prose keeps its complete strings
    assert parse_prompts('["Why do cats purr?", "How do bees fly?"\nThese are two questions.') == ["Why do cats purr?", "How do bees fly?"]
    rendered = render_meta_prompt("{examples_json}", ['Say "hi".', "Add 2 and 3."], 5)
    assert json.loads(rendered) == ['Say "hi".', "Add 2 and 3."]


def test_request_script_and_length_rules():
    from distill.augment import is_request, off_script

    assert is_request("What is 7 cubed?") and is_request("Omar has 7 books. Count the books he has left.")
    assert is_request("Please plan a trip to Lisbon.") and is_request("Can you list three birds.")
    assert not is_request("The weather was lovely in the park.") and not is_request("Gold is a precious metal.")
    assert off_script("Опишите круговорот воды для ребёнка", {"LATIN"}) == "CYRILLIC 31"
    assert off_script("Explain how \u03c0 relates a circle's circumference to its diameter.", {"LATIN"}) is None
    assert off_script("Translate 'good morning' into Japanese: おはよう", {"LATIN"}) is not None
    assert off_script("Опишите", {"LATIN", "CYRILLIC"}) is None


def test_request_rule_follows_the_seeds(tokenizer):
    """--request-form auto applies the English request rule only when the seeds follow it."""
    statements = ["The quick brown fox jumps over the lazy dog near the river bank today.",
                  "A short note about the weather in the mountains during the early spring.",
                  "Our team shipped the new release after three weeks of careful testing work."]
    out = "Prompt: The old lighthouse keeper painted the stairs a bright shade of blue last summer."
    for seeds, expected in ((make_seeds(statements), 1), (make_seeds(), 0)):
        teacher = FakeTeacher(tokenizer, lambda *_: out)
        result = augment_prompts(teacher, seeds, cfg(num_prompts=1, few_shot=1, requests_per_round=1, max_rounds=1))
        assert result.stats["accepted"] == expected, result.stats["rejected"]
        assert result.stats["filters"]["request_form"] is (expected == 0)
    teacher = FakeTeacher(tokenizer, lambda *_: out)
    forced = augment_prompts(teacher, make_seeds(statements), cfg(num_prompts=1, few_shot=1, requests_per_round=1, max_rounds=1,
                                                                  request_form="on"))
    assert forced.stats["rejected"]["not_a_request"] == 1


def test_structured_output_in_http_bodies():
    """response_format goes where the endpoint supports it: chat everywhere, completions on vLLM."""
    from distill.augment import prompts_schema
    from distill.teachers.base import GenerationRequest, SamplingParams
    from distill.teachers.openai_http import EndpointConfig, OpenAITeacher, TokenMap

    schema = prompts_schema(5)
    request = GenerationRequest("a", (1, 2), seed=7, messages=({"role": "user", "content": "hi"},))
    params = SamplingParams(max_new_tokens=8, top_k_logprobs=0, json_schema=schema)
    for server, api, expected in (("vllm", "completions", True), ("openai", "chat", True), ("openai", "completions", False),
                                  ("sglang", "completions", False)):
        teacher = OpenAITeacher("t", "m", tokenizer=None, max_context=64,
                                endpoint=EndpointConfig(base_url="http://127.0.0.1:1/v1", server=server, api=api))
        teacher.token_map = TokenMap(None)
        body = teacher._generation_job(request, params, 0).body
        assert ("response_format" in body) is expected and teacher.structured_output is expected
        if expected:
            assert body["response_format"]["json_schema"]["schema"] == json.loads(schema)
        assert teacher.can_score is (server == "vllm")
