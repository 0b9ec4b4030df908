"""Write the demo task's files: seeds, the held-out eval suite, and the demo teacher's tokenizer.

    python data/demo/make_data.py            # rewrites data/demo/seeds.jsonl, eval/demo.jsonl,
                                             # teachers/demo/ tokenizer files

Deterministic: the same files byte for byte on every run (fixed seeds, sorted JSON keys).
The seeds carry their worked answer as ``reference`` (so the seeds-only baseline can be trained
on them); the eval suite carries the final integer and the ``numeric`` scorer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import task  # noqa: E402

SEED_RNG, EVAL_RNG, TRAIN_RNG, VALIDATION_RNG = 1, 2, 3, 4
NUM_SEEDS, NUM_EVAL = 64, 600

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1024
# Qwen2's pre-tokenizer split (the regex of its tokenizer.json).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def seed_problems() -> list[task.Problem]:
    return task.problems(SEED_RNG, NUM_SEEDS)


def eval_problems() -> list[task.Problem]:
    return task.problems(EVAL_RNG, NUM_EVAL, exclude={p.prompt for p in seed_problems()})


def training_problems(count: int, exclude: set[str]) -> list[task.Problem]:
    """The teacher's own training problems: a third stream, never an eval or seed prompt."""
    return task.problems(TRAIN_RNG, count, exclude=exclude)


def validation_problems(count: int, exclude: set[str]) -> list[task.Problem]:
    """Problems for choosing among the teacher's checkpoints: a fourth stream, disjoint from the
    seeds, the eval suite and the training problems, so the suite stays a held-out test."""
    return task.problems(VALIDATION_RNG, count, exclude=exclude)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    tmp.replace(path)


def build_tokenizer(out_dir: Path, texts: list[str]):
    """Byte-level BPE fit on task text (every word of the templated language becomes ~1 token),
    Qwen-style chat template, eos <|im_end|>, pad <|endoftext|>.

    The merges are learnt with a space before a capital letter or a digit kept apart, so no
    merge ever joins a space to a name or a number: "Zoe" opening a story and "... does Zoe
    have" both hold the token `Zoe`, and the "5" of "has 5 shells" is the "5" an answer line
    starts with. With merges learnt on the plain byte-level split a question's name was `ĠZoe`,
    another id than the story's opening `Zoe`: repeating it was no plain copy of a token
    (bench/teacher_names.md has how the demo teacher learnt to copy names).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" (?=[A-Z0-9])"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Runtime pre-tokenization: what transformers applies to every Qwen2-typed model directory
    # whatever the file says (digits one by one, a space kept apart from a digit). Written into
    # the file too, so the `tokenizers` library, older transformers and any other reader of
    # tokenizer.json produce the same ids the teacher was trained on. No merge above crosses
    # what this split separates, so it leaves every id of the training split as it was.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     additional_special_tokens=["<|im_start|>"])
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = 1024
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    return hf_tok


def meta_prompt_text() -> str:
    """The fixed words of the demo teacher's meta-prompt (teachers/demo/recipe.yaml)."""
    import yaml

    recipe = yaml.safe_load((ROOT / "teachers" / "demo" / "recipe.yaml").read_text())
    return recipe["augment"]["meta_prompt"].replace("{examples}", "Prompt: ").replace("{num_new}", "5")


def main() -> None:
    seeds, evals = seed_problems(), eval_problems()
    assert not {p.prompt for p in seeds} & {p.prompt for p in evals}
    _write_jsonl(HERE / "seeds.jsonl", [
        {"id": f"seed-{i:02d}", "prompt": p.prompt, "reference": p.response} for i, p in enumerate(seeds)])
    _write_jsonl(ROOT / "eval" / "demo.jsonl", [
        {"id": f"demo-{i:03d}", "prompt": p.prompt, "reference": str(p.answer), "scorer": "numeric"}
        for i, p in enumerate(evals)])
    # The tokenizer is fit on task text (a stream of its own) and the augmentation meta-prompt,
    # so both are short in tokens.
    corpus = [f"{p.prompt}\n{p.response}" for p in task.problems(99, 20000)]
    build_tokenizer(ROOT / "teachers" / "demo" / "model", corpus + [meta_prompt_text()] * 500)
    print(f"wrote {len(seeds)} seeds, {len(evals)} eval prompts, tokenizer in teachers/demo/model")


if __name__ == "__main__":
    main()
