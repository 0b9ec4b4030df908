"""Starting KL to the teacher of students initialised from its layers (`distill init-student`)
against a random init of the same shape, on the real SmolLM2-135M-Instruct teacher.

The teacher answers a set of varied instructions (top-20 log-probs stored, as `distill generate`
writes them); each student's forward KL(teacher || student) per token over those answers is the
training loss's own (`distill.eval.kl.kl_to_teacher`), before any training step.

    python bench/init_student.py --prompts 48 > bench/init_student.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = ["the water cycle", "photosynthesis", "the French Revolution", "prime numbers", "volcanoes", "the moon",
          "recycling", "the heart", "electric cars", "honey bees", "the Roman Empire", "rainbows"]
TEMPLATES = ["Explain {} to a ten-year-old.", "Write two sentences about {}.", "List three facts about {}.",
             "Why is {} important?"]
CHOICES = {
    "first 3 + last 3 (0,1,2,27,28,29)": "0,1,2,-3,-2,-1",
    "every 5th (0,5,10,15,20,25)": "0,5,10,15,20,25",
    "first 6 (0-5)": "0,1,2,3,4,5",
    "last 6 (24-29)": "-6,-5,-4,-3,-2,-1",
    "first + last (0,29)": "0,-1",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill.corpus import open_corpus
    from distill.eval.generation import Generation
    from distill.eval.kl import TeacherRef, kl_to_teacher

    spec = importlib.util.spec_from_file_location("real_teacher", ROOT / "scripts" / "real_teacher.py")
    real_teacher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_teacher)
    teacher_dir = real_teacher.build()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts = [t.format(topic) for topic in TOPICS for t in TEMPLATES][: args.prompts]
        (tmp / "seeds.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        run = [sys.executable, "-m", "distill"]
        subprocess.run([*run, "generate", "--teacher", str(teacher_dir), "--prompts", str(tmp / "seeds.jsonl"),
                        "--out", str(tmp / "corpus"), "--max-new-tokens", str(args.max_new_tokens), "--top-k", "20",
                        "--temperature", "0", "--batch-size", "16", "--no-progress"], check=True, capture_output=True)
        rows = list(open_corpus(tmp / "corpus").iter_rows())
        ref = TeacherRef("teacher", [], None, [Generation(r.prompt_ids.tolist(), r.response_ids.tolist(), "",
                                                          r.topk_ids, r.topk_logprobs) for r in rows])
        results = []
        for name, layers in CHOICES.items():
            out = tmp / name.split(" (")[0].replace(" ", "_").replace("+", "and")
            subprocess.run([*run, "init-student", "--teacher", str(teacher_dir), "--out", str(out),
                            "--layers", layers], check=True, capture_output=True)
            model = AutoModelForCausalLM.from_pretrained(out).eval()
            kl, tokens = kl_to_teacher(model, ref, batch_size=16)
            results.append((name, kl, sum(p.numel() for p in model.parameters())))
        config = AutoConfig.from_pretrained(teacher_dir)
        config.num_hidden_layers = 6
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:6]
        random_init = AutoModelForCausalLM.from_config(config).eval()
        kl, _ = kl_to_teacher(random_init, ref, batch_size=16)
        results.append(("random init, 6 layers", kl, sum(p.numel() for p in random_init.parameters())))
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
        self_kl, _ = kl_to_teacher(teacher, ref, batch_size=16)

    print(f"# Starting KL of students initialised from the teacher's layers ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print()
    print(f"Teacher SmolLM2-135M-Instruct (30 layers; scripts/real_teacher.py). {len(rows)} instructions "
          f"({len(TOPICS)} topics x {len(TEMPLATES)} forms), greedy answers of <= {args.max_new_tokens} tokens "
          f"({tokens} tokens), top-20 stored as `distill generate` stores them. KL = forward KL(teacher || student) "
          "per token over the teacher's answers, top-20 + tail bins, before any training. x86_64 CPU, torch "
          f"{torch.__version__}, fp32. `python bench/init_student.py --prompts {args.prompts}`.")
    print()
    print("| student init | layers kept | parameters | KL to teacher (nats/token) |")
    print("| --- | --- | ---: | ---: |")
    for name, kl, params in results:
        layers = name.split(" (")[1][:-1] if " (" in name else "-"
        print(f"| {name.split(' (')[0]} | {layers} | {params / 1e6:.1f}M | {kl:.3f} |")
    print(f"| (the teacher itself) | all 30 | - | {self_kl:.4f} |")


if __name__ == "__main__":
    main()
