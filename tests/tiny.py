"""Tiny tokenizers and models built locally (no hub): the test suite's teachers and students.

``make_tokenizer(dir)`` trains a small byte-level BPE with a Qwen-style chat template;
``make_model_dir(dir, ...)`` saves a randomly initialised Qwen2 model plus that tokenizer as a
Hugging Face model directory, which every backend and the trainer load like a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_TRAINING_TEXT = [
    "What is the sum of 12 and 30? The answer is 42.",
    "Write a short poem about the sea and the wind at night.",
    "Explain why the sky is blue in one sentence.",
    "List three prime numbers greater than ten: 11, 13, 17.",
    "Translate 'good morning' into French: bonjour.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "How many minutes are there in three hours? There are 180 minutes.",
    "Give me a recipe for a simple tomato soup with basil and garlic.",
    "system user assistant You are a helpful assistant.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) ? ! . , : ; ' \"",
]


def make_tokenizer(out_dir: str | Path, vocab_size: int = 320):
    """Train and save a byte-level BPE tokenizer with a chat template; returns the HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT * 20, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    return hf_tok


def make_model_dir(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int | None = None,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
):
    """Save a random Qwen2 model + tokenizer as an HF model dir; returns the path.

    ``vocab_size`` defaults to the tokenizer's length rounded up to a multiple of 64, the way
    real checkpoints pad their embedding matrix beyond the tokenizer.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer = make_tokenizer(out_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.save_pretrained(out_dir)
    if vocab_size is None:
        vocab_size = -(-len(tokenizer) // 64) * 64
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out_dir)
    return out_dir
