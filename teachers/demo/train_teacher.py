"""Train the demo teacher from scratch: a small Qwen2 model that solves the demo task AND writes
new task prompts when given the augmentation meta-prompt, like an instruct teacher.

    python teachers/demo/train_teacher.py              # rewrites teachers/demo/model/*
    python teachers/demo/train_teacher.py --steps 200 --writing-steps 20 --out /tmp/t  # a quick smoke run

Deterministic on CPU for a fixed torch build and thread count (seeded data, init and batch
order). Running time and the measured accuracy are in docs/demo.md.

Four phases, like a base model that is grown, instruction-tuned and then polished:
1. ``--pretrain-steps`` (1,500) on plain prompt text: rows of three "Prompt: <problem>" lines, no
   chat template, loss on every token, cosine from ``--pretrain-lr`` (6e-3). Here the model learns
   the prompt language, above all that a question names the people of its story: it learns to
   copy the name. Without this phase no 8-layer teacher did (bench/teacher_names.md: its
   probability of the right name stayed at 1/40, and ~85% of the prompts it wrote asked about
   someone the story never mentioned); after it, 83% of the prompts it writes are coherent.
2. ``--grow-to`` (12): the 8-layer model is deepened to 12 layers without changing what it
   computes (``grow_depth``: each new layer a copy of the one below with its output projections
   zeroed, one after every second layer; "progressive stacking"), then every layer trains in
   phase 3. Why: the student is 2 layers, and on a CPU a small model's time per token grows with
   its layer count, not its width; against 8 teacher layers the student was only 2.3-3.2x faster
   per token, against 12 it is ~3.9x. A 12-layer model trained from scratch the same way did not
   learn to copy names in the pretraining phase (16.5% coherent prompts at steps 900 and 1,800 of
   the task phase; bench/teacher_names.md); grown from the 8-layer one it keeps what it learnt.
3. ``--steps`` (2,700) on the task and augmentation examples below, constant ``--lr`` (3e-3).
4. ``--writing-steps`` (800): the writing phase, constant ``--writing-lr`` (1e-3) on
   ``--writing-examples`` (4,000) fresh augmentation examples mixed with as many task examples
   (``--writing-task-share`` 0.5). After phase 3 the teacher solved 98.2% of the suite but wrote
   poor two-person problems: in 199 of 268 of them the giver was neither of the story's two
   people, and 18% of all its prompts asked about someone the story never mentioned, which kept
   the student at 0.80 of the teacher. After this phase: 94-97% coherent prompts, 175 of 178
   givers right, 0.990 on the suite (bench/teacher_writing.md).

The shipped weights: these defaults, 1 torch thread, built in two runs of this script: phases 1-3
(1,899 s with another training job on the other core; the same safetensors bytes, sha256
554a7248…, as an earlier training that stopped after pretraining and went on with ``--init``),
then phase 4 with ``--init`` from those weights and ``--pretrain-steps 0 --grow-to 0 --steps 0``
(1,056 s; sha256 43d5ebae…; a second run gave the same bytes). Phase 4 reseeds its own data
order and torch, so run either way it gives the same bytes (tests/test_demo_task.py checks that a
phase continued from saved weights equals the phase run in one process). 99.0% greedy on the 600
suite prompts; the probes read, at steps 900 / 1,800 of phase 3, validation accuracy 65.5 / 90.8%
and coherent written prompts 71.6 / 80.3%.

With ``--save-every N`` each saved checkpoint is also probed for the teacher's two jobs: task
accuracy on 600 validation problems (a generator stream of its own, disjoint from seeds, eval
suite and training problems), and prompt writing: 40 augmentation requests sampled at
temperature 1, the share of written prompts that ``task.is_coherent`` accepts (the question asks
about people and things the story introduced). ``--schedule cosine``, ``--init DIR`` (continue
from a model) and ``--hidden-size``/``--intermediate-size``/``--layers`` exist for experiments; their
outcomes are in bench/teacher_names.md. The defaults rebuild the shipped weights.

``--device cuda`` trains on a GPU (faster, not bit-reproducible: experiments only).
``--writing-kind-weights exchange=3`` draws the writing phase's target problems of a kind that many
times as often (unset by default): with 3 and 5 the teacher wrote 3-5x more two-person exchange
prompts but fewer shopping and two-count ones, and the student did worse (0.86 / 0.83 against 0.91;
2,000 prompts, 1,500 steps at peak rate 5e-3, bench/teacher_writing.md).

Training data (all from the task generator's own stream, never a seed or eval prompt):
- task examples: a problem as the user turn -> its worked answer;
- augmentation examples: ``distill.augment``'s meta-prompt filled with ``few_shot`` example
  problems (exactly as ``distill generate --augment`` renders it) -> ``num_new`` fresh problems,
  each on its own line starting with "Prompt:".
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "data" / "demo"))

import make_data  # noqa: E402
import task  # noqa: E402
import trainlib  # noqa: E402

# The teacher is pretrained at 8 layers x 96 and grown to 12 (--grow-to) before the task phase:
# 1.32M parameters (5.3 MB of fp32 safetensors), several times slower per token than the 2-layer
# demo student; it trains on one CPU core in about 35 minutes.
MODEL = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)


def meta_prompt_template() -> str:
    """The meta-prompt the teacher learns: the recipe's augment.meta_prompt (pinned there, the
    built-in default of distill.augment at training time) so later edits of the default do not
    change what the shipped teacher was trained on."""
    import yaml

    recipe = yaml.safe_load((HERE / "recipe.yaml").read_text())
    return recipe["augment"]["meta_prompt"]


def augmentation_examples(count: int, rng: random.Random, pool: list[task.Problem], few_shot: int,
                          num_new: int, kind_weights: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """(meta-prompt, "Prompt: ..." lines) pairs; examples and targets drawn from ``pool``.

    ``kind_weights`` (kind -> weight, unnamed kinds 1) draws the written targets of each kind that
    many times as often as the pool holds them (distinct within a pair); the examples shown stay
    plain draws. None: one plain ``rng.sample`` per pair, as phases 2-3 were built."""
    from distill.augment import EXAMPLE_PREFIX, render_meta_prompt

    template = meta_prompt_template()
    cumulative = None
    if kind_weights:
        cumulative, total = [], 0.0
        for problem in pool:
            total += kind_weights.get(problem.kind, 1.0)
            cumulative.append(total)
    out = []
    for _ in range(count):
        if cumulative is None:
            picks = rng.sample(pool, few_shot + num_new)
        else:
            picks = rng.sample(pool, few_shot)
            while len(picks) < few_shot + num_new:
                pick = rng.choices(pool, cum_weights=cumulative)[0]
                if all(pick is not p for p in picks):
                    picks.append(pick)
        prompt = render_meta_prompt(template, [p.prompt for p in picks[:few_shot]], num_new)
        response = "\n".join(EXAMPLE_PREFIX + p.prompt for p in picks[few_shot:])
        out.append((prompt, response))
    return out


def parse_kind_weights(text: str) -> dict[str, float]:
    """``"exchange=3,shopping=2"`` -> {"exchange": 3.0, "shopping": 2.0}; errors name the bad part."""
    kinds = {builder.__name__.lstrip("_") for builder, _ in task.KINDS}
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, value = part.partition("=")
        if not sep or kind not in kinds:
            raise ValueError(f"'{part}': expected KIND=WEIGHT with KIND one of {sorted(kinds)}")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise ValueError(f"'{part}': the weight '{value}' is not a number") from None
        if weights[kind] <= 0:
            raise ValueError(f"'{part}': the weight must be > 0")
    return weights


def build_model(tokenizer, seed: int):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=-(-len(tokenizer) // 64) * 64, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, **MODEL)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


def grow_depth(model, layers: int):
    """Deepen a trained decoder to ``layers`` layers without changing what it computes: each new
    layer is a copy of the layer below it with its two output projections (attention o_proj, MLP
    down_proj) zeroed, so it adds nothing to the residual stream until training moves those
    weights. New layers are spread evenly (8 -> 12: one after every second layer)."""
    import copy

    import torch

    old = list(model.model.layers)
    extra = layers - len(old)
    if extra <= 0:
        return model
    after = {round((i + 1) * len(old) / extra) - 1 for i in range(extra)}  # insert after these layers
    assert len(after) == extra, (len(old), layers)
    grown = []
    for i, layer in enumerate(old):
        grown.append(layer)
        if i in after:
            new = copy.deepcopy(layer)
            with torch.no_grad():
                new.self_attn.o_proj.weight.zero_()
                new.mlp.down_proj.weight.zero_()
            grown.append(new)
    for index, layer in enumerate(grown):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by it
    model.model.layers = torch.nn.ModuleList(grown)
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * layers
    return model


def copy_tokenizer(out: Path) -> None:
    """The tokenizer files exactly as data/demo/make_data.py wrote them (``save_pretrained`` would
    re-serialise them differently), unless ``out`` is the shipped folder itself."""
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        source, target = HERE / "model" / name, out / name
        if source.exists() and target.resolve() != source.resolve():
            shutil.copyfile(source, target)


def task_accuracy(model, tokenizer, problems: list[task.Problem]) -> float:
    outputs = trainlib.greedy(model, tokenizer, [p.prompt for p in problems])
    return sum(task.extract_answer(o) == p.answer for o, p in zip(outputs, problems)) / len(problems)


def prompt_coherence(model, tokenizer, pool: list[task.Problem], requests: int, few_shot: int, num_new: int,
                     seed: int = 0) -> tuple[float, int]:
    """(share of coherent prompts, prompts parsed) over ``requests`` augmentation requests sampled at
    temperature 1 as ``distill generate --augment`` does: how well the teacher writes new prompts."""
    import torch
    from distill.augment import parse_prompts, render_meta_prompt

    rng = random.Random(seed)
    template = meta_prompt_template()
    metas = [render_meta_prompt(template, [p.prompt for p in rng.sample(pool, few_shot)], num_new)
             for _ in range(requests)]
    torch.manual_seed(seed)
    written = [p for text in trainlib.greedy(model, tokenizer, metas, max_new_tokens=320, do_sample=True)
               for p in parse_prompts(text)]
    model.train()
    return (sum(map(task.is_coherent, written)) / len(written) if written else 0.0), len(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "model"), help="model directory to write")
    parser.add_argument("--steps", type=int, default=2700)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--task-examples", type=int, default=16000)
    parser.add_argument("--augment-examples", type=int, default=800)
    parser.add_argument("--few-shot", type=int, default=3, help="as distill.augment's default")
    parser.add_argument("--num-new", type=int, default=5, help="as distill.augment's default")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results are deterministic per thread count)")
    parser.add_argument("--save-every", type=int, default=0, help="also save OUT/step-N every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", help="start from this model directory instead of a random init")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    parser.add_argument("--hidden-size", type=int, default=MODEL["hidden_size"])
    parser.add_argument("--intermediate-size", type=int, default=MODEL["intermediate_size"])
    parser.add_argument("--layers", type=int, default=MODEL["num_hidden_layers"])
    parser.add_argument("--pretrain-steps", type=int, default=1500,
                        help="first train this many steps on plain prompt text (3 problems per row, loss on all; 0: skip)")
    parser.add_argument("--pretrain-lr", type=float, default=6e-3)
    parser.add_argument("--grow-to", type=int, default=12,
                        help="after pretraining, deepen the model to this many layers (grow_depth) before the task phase")
    parser.add_argument("--writing-steps", type=int, default=800,
                        help="last phase: fresh augmentation examples mixed with task examples (prompt writing); 0 = skip")
    parser.add_argument("--writing-examples", type=int, default=4000, help="fresh augmentation examples for that phase")
    parser.add_argument("--writing-task-share", type=float, default=0.5,
                        help="task examples in that phase, as a share of its rows")
    parser.add_argument("--writing-lr", type=float, default=1e-3)
    parser.add_argument("--writing-kind-weights", default="",
                        help="KIND=W[,...]: draw that phase's written problems of KIND W times as often (unnamed kinds 1)")
    parser.add_argument("--device", default="cpu", help="cpu (the shipped weights) or cuda for experiments")
    args = parser.parse_args()
    if not 0 <= args.writing_task_share < 1:
        parser.error(f"--writing-task-share must be in [0, 1), got {args.writing_task_share}")
    try:
        kind_weights = parse_kind_weights(args.writing_kind_weights)
    except ValueError as exc:
        parser.error(f"--writing-kind-weights {exc}")

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(HERE / "model")
    seeds, evals = make_data.seed_problems(), make_data.eval_problems()
    held_out = {p.prompt for p in seeds} | {p.prompt for p in evals}
    problems = make_data.training_problems(args.task_examples, exclude=held_out)
    rng = random.Random(args.seed)
    pairs = [(p.prompt, p.response) for p in problems]
    pairs += augmentation_examples(args.augment_examples, rng, problems, args.few_shot, args.num_new)
    # Task examples carry loss on the user's words too: the teacher then models the prompt
    # distribution itself, and the (long) augmentation examples only teach the output format.
    examples = [trainlib.encode_example(tokenizer, prompt, response, prompt_loss=i < len(problems))
                for i, (prompt, response) in enumerate(pairs)]
    print(f"{len(examples)} examples ({args.augment_examples} augmentation), "
          f"{sum(len(a) + len(b) for a, b in examples) / len(examples):.0f} tokens each on average", flush=True)

    MODEL.update(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                 num_hidden_layers=args.layers)
    if args.init:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.init)
    else:
        model = build_model(tokenizer, args.seed)
    model.to(args.device)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    # Checkpoints are compared on a validation stream of their own, never on the eval suite.
    check = make_data.validation_problems(600, exclude=held_out | {p.prompt for p in problems})

    def report(step: int) -> None:
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            model.save_pretrained(Path(args.out) / f"step-{step}")
            coherent, written = prompt_coherence(model, tokenizer, check, 40, args.few_shot, args.num_new)
            print(f"step {step}: task accuracy on 600 validation problems {task_accuracy(model, tokenizer, check):.3f}; "
                  f"coherent written prompts {coherent:.3f} of {written}", flush=True)
            model.train()

    if args.pretrain_steps:
        # A base-model phase: rows of "Prompt: <problem>" lines, no chat template, loss on every
        # token, so the model learns the prompt language (a question names the story's people)
        # before it learns to answer and to follow the meta-prompt.
        from distill.augment import EXAMPLE_PREFIX

        texts = [p.prompt for p in problems]
        rows = []
        for _ in range(len(texts)):
            ids = tokenizer("\n".join(EXAMPLE_PREFIX + t for t in rng.sample(texts, 3)), add_special_tokens=False)["input_ids"]
            rows.append(([], ids + [tokenizer.eos_token_id]))
        print(f"pretraining {args.pretrain_steps} steps on {len(rows)} rows of prompt text", flush=True)
        trainlib.train(model, rows, steps=args.pretrain_steps, batch_size=args.batch_size, lr=args.pretrain_lr,
                       pad_id=tokenizer.pad_token_id, seed=args.seed, cosine=True)
        if args.save_every:
            model.save_pretrained(Path(args.out) / "pretrained")
            copy_tokenizer(Path(args.out) / "pretrained")

    layers_before = model.config.num_hidden_layers
    if args.grow_to:
        model = grow_depth(model, args.grow_to)
        print(f"grown to {args.grow_to} layers: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)

    # A constant learning rate after warmup: the weights after S steps are the same whatever
    # --steps is, so a run can be stopped at any saved step and still be reproduced exactly.
    if args.steps:
        trainlib.train(model, examples, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       pad_id=tokenizer.pad_token_id, seed=args.seed, cosine=args.schedule == "cosine", callback=report)
    if args.writing_steps:
        writing_rng = random.Random(args.seed + 1)
        writing = [trainlib.encode_example(tokenizer, prompt, response)
                   for prompt, response in augmentation_examples(args.writing_examples, writing_rng, problems,
                                                                 args.few_shot, args.num_new, kind_weights)]
        share = args.writing_task_share
        task_rows = writing_rng.sample(examples[:len(problems)], round(len(writing) * share / (1 - share))) if share else []
        print(f"writing phase: {args.writing_steps} steps on {len(writing)} fresh augmentation examples "
              f"and {len(task_rows)} task examples", flush=True)
        trainlib.train(model, writing + task_rows, steps=args.writing_steps, batch_size=args.batch_size,
                       lr=args.writing_lr, pad_id=tokenizer.pad_token_id, seed=args.seed + 1, cosine=False)
    accuracy = task_accuracy(model, tokenizer, evals)
    train_seconds = time.time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copy_tokenizer(out)
    summary = {"pretrain_steps": args.pretrain_steps, "pretrain_lr": args.pretrain_lr,
               "layers": model.config.num_hidden_layers, "grown_from": layers_before if model.config.num_hidden_layers > layers_before else None,
               "steps": args.steps, "writing_steps": args.writing_steps, "writing_lr": args.writing_lr,
               "writing_examples": args.writing_examples if args.writing_steps else 0,
               "writing_task_share": args.writing_task_share, "writing_kind_weights": kind_weights,
               "lr": args.lr, "batch_size": args.batch_size, "examples": len(examples),
               "parameters": sum(p.numel() for p in model.parameters()),
               "eval_accuracy_greedy": accuracy, "seconds": round(train_seconds), "threads": args.threads,
               "torch": torch.__version__}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
