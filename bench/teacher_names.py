"""Does a demo-teacher checkpoint copy names? Its two prompt-writing figures, per model directory.

    python bench/teacher_names.py teachers/demo/model [OTHER_MODEL_DIR ...]

- name probability: teacher-forced on augmentation requests (the meta-prompt with 3 validation
  problems, then "Prompt: " + a 4th), the probability the model gives the right name where the
  question names a person, and the mass on all names the story mentioned. A model that copies
  puts most of it on the right name; one that does not spreads it over all 40 names (1/40 = 2.5%).
- coherent share: 40 augmentation requests sampled at temperature 1 (as ``distill generate
  --augment``), the share of written prompts ``task.is_coherent`` accepts.

Checkpoints without tokenizer files (``train_teacher.py --save-every``) use the shipped tokenizer.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "data" / "demo"), str(ROOT / "teachers" / "demo")]

import make_data  # noqa: E402
import task  # noqa: E402
import train_teacher  # noqa: E402
import trainlib  # noqa: E402


def name_probability(model, tokenizer, pool: list[task.Problem], requests: int = 60, seed: int = 0) -> tuple[float, float, int]:
    """(mean p(right name), mean mass on the story's names, questions probed)."""
    import torch
    from distill.augment import EXAMPLE_PREFIX, render_meta_prompt

    names = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + n))[-1] for n, _ in task.NAMES}
    template, rng = train_teacher.meta_prompt_template(), random.Random(seed)
    right = story_mass = 0.0
    probed = 0
    for _ in range(requests):
        picks = rng.sample(pool, 4)
        head, response = trainlib.encode_example(
            tokenizer, render_meta_prompt(template, [p.prompt for p in picks[:3]], 5), EXAMPLE_PREFIX + picks[3].prompt)
        ids = head + response
        at = [i for i in range(len(head), len(ids)) if ids[i] in names]
        question = re.split(r"(?<=[.?])\s+", picks[3].prompt)[-1]
        if len(at) < 2 or not any(n in question for n, _ in task.NAMES):
            continue  # no named person in the question
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, at[-1] - 1], -1)
        right += probs[ids[at[-1]]].item()
        story_mass += sum(probs[t].item() for t in set(ids[len(head):at[-1]]) & names)
        probed += 1
    return right / probed, story_mass / probed, probed


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    pool = make_data.validation_problems(600, exclude=set())
    for path in sys.argv[1:] or [str(ROOT / "teachers" / "demo" / "model")]:
        tok_dir = path if (Path(path) / "tokenizer.json").exists() else ROOT / "teachers" / "demo" / "model"
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        right, mass, probed = name_probability(model, tokenizer, pool)
        coherent, written = train_teacher.prompt_coherence(model, tokenizer, pool, 40, 3, 5)
        print(f"{path}: p(right name) {right:.3f}, mass on the story's names {mass:.3f} ({probed} questions); "
              f"coherent written prompts {coherent:.3f} of {written}", flush=True)


if __name__ == "__main__":
    main()
