"""Fingerprints that say whether two tokenizers (or two model weight sets) are the same.

Logit KD is only meaningful when teacher and student share one tokenizer. Comparing
``vocab_size`` is wrong (Qwen2.5 pads embeddings to 151936 or 152064 rows over a 151665-token
tokenizer), so we hash the tokenizer's contents instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 (hex) over vocab, merges, added/special tokens, BOS/EOS and the chat template."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    merges: Any = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        merges = model.get("merges")
    added = sorted(
        (int(idx), str(tok.content), bool(tok.special))
        for idx, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
    )
    payload = {
        "vocab": vocab,
        "merges": merges,
        "added": added,
        # Only the roles that shape sequences: tokenizer classes add defaults for the others (a
        # Qwen2Tokenizer invents an unk_token that the same files loaded generically lack).
        "special": {role: str(getattr(tokenizer, role, None)) for role in ("bos_token", "eos_token")},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def weights_fingerprint(model_dir: str | Path, max_bytes_per_file: int = 1 << 20) -> str:
    """A cheap identity for a local weights folder: sha256 over each weight file's name, size and
    first ``max_bytes_per_file`` bytes (full hashing of 140 GB of weights would take minutes)."""
    digest = hashlib.sha256()
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    for path in files:
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with path.open("rb") as fh:
            digest.update(fh.read(max_bytes_per_file))
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
