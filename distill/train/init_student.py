"""`distill init-student`: a student initialised from the teacher by keeping a subset of its layers.

Depth pruning, as DistilBERT and Minitron start their students: the student has the teacher's
architecture, width, embeddings, final norm and LM head, and ``len(layers)`` decoder layers, each
a copy of the teacher layer it names. The output is an HF model folder with the teacher's
tokenizer (logit KD needs the same vocabulary), ready for ``distill train --student DIR``.
Which layers to keep: bench/init_student.md measures the starting KL of the choices.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import ConfigError, bad, field

RECORD = "distill-init-student.json"


@dataclass(frozen=True)
class InitStudentConfig:
    teacher: str = field("", help="teacher HF model folder (config.json, weights, tokenizer)")
    out: str = field("", help="output folder for the student (an HF model folder)")
    layers: tuple[str, ...] = field((), help="teacher layers to keep, in order (0-based; negative counts from the "
                                             "end; repeat or comma-separate), e.g. 0,1,2,-3,-2,-1",
                                    separator=",", default_text="required")

    def __post_init__(self) -> None:
        for name in ("teacher", "out"):
            if not getattr(self, name):
                bad(name, "required")
        if not self.layers:
            bad("layers", "name at least one teacher layer to keep, e.g. 0,1,2,-3,-2,-1")
        for value in self.layers:
            if not str(value).lstrip("-").isdigit():
                bad("layers", f"{value!r} is not a layer index")


def resolve_layers(spec: tuple[str, ...], num_layers: int) -> list[int]:
    """Layer indices (negative from the end) -> 0-based teacher layers; errors name the flag."""
    layers = []
    for value in spec:
        index = int(value)
        resolved = index + num_layers if index < 0 else index
        if not 0 <= resolved < num_layers:
            raise ConfigError(f"--layers: {index} is outside the teacher's {num_layers} layers")
        layers.append(resolved)
    if len(set(layers)) != len(layers):
        raise ConfigError(f"--layers: {','.join(spec)} names a layer twice")
    return layers


def prune_state_dict(state: dict[str, Any], layers: list[int]) -> dict[str, Any]:
    """The teacher's weights for a student keeping ``layers``: decoder layer i of the teacher
    becomes layer j of the student (``layers[j] == i``); everything outside the layers is kept."""
    out = {}
    new_index = {old: new for new, old in enumerate(layers)}
    for key, value in state.items():
        parts = key.split(".")
        if "layers" in parts:
            at = parts.index("layers")
            old = int(parts[at + 1])
            if old not in new_index:
                continue
            parts[at + 1] = str(new_index[old])
            key = ".".join(parts)
        out[key] = value
    return out


def run(config: InitStudentConfig) -> Path:
    """Write the student folder; returns its path."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from distill.fingerprint import weights_fingerprint

    teacher_dir, out = Path(config.teacher), Path(config.out)
    if not (teacher_dir / "config.json").is_file():
        raise ConfigError(f"--teacher {teacher_dir}: not an HF model folder (no config.json)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty; choose a new folder")
    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    layers = resolve_layers(config.layers, int(teacher_config.num_hidden_layers))
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    student_config = AutoConfig.from_pretrained(teacher_dir)
    student_config.num_hidden_layers = len(layers)
    if getattr(student_config, "layer_types", None):
        student_config.layer_types = [teacher_config.layer_types[i] for i in layers]
    student = AutoModelForCausalLM.from_config(student_config, dtype=torch.float32)
    missing, unexpected = student.load_state_dict(prune_state_dict(teacher.state_dict(), layers), strict=False)
    tied = {"lm_head.weight"} if student_config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ConfigError(f"--teacher {teacher_dir}: weights do not map onto a {len(layers)}-layer student "
                          f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    student.tie_weights()
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    student.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(staging)
    if (teacher_dir / "generation_config.json").is_file():
        shutil.copy(teacher_dir / "generation_config.json", staging / "generation_config.json")
    params = sum(p.numel() for p in student.parameters())
    record = {"teacher": str(teacher_dir.resolve()), "teacher_weights_sha256": weights_fingerprint(teacher_dir),
              "teacher_layers": int(teacher_config.num_hidden_layers), "kept_layers": layers, "params": params}
    (staging / RECORD).write_text(json.dumps(record, indent=1))
    if out.exists():
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    print(f"student: {out} ({len(layers)} of {teacher_config.num_hidden_layers} teacher layers: "
          f"{','.join(map(str, layers))}; {params / 1e6:.1f}M parameters)")
    return out
