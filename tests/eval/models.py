"""Tiny model dirs with known behaviour for the eval tests: one that always answers a fixed text,
one whose every output is empty (it emits an end-of-text token first)."""

from __future__ import annotations

from pathlib import Path

def make_constant_answer_dir(out_dir: str | Path, tokenizer_dir: str | Path, answer: str, *, sharpness: float = 4.0) -> Path:
    """A tiny Qwen2 built (not trained) so that its greedy answer to any prompt is ``answer``
    then <|im_end|>: its attention and MLP outputs are zero, so each next token depends only on
    the current one, and the embeddings/LM head encode the chain "\\n" -> answer tokens -> EOS.
    ``sharpness`` sets how peaked each step's distribution is (the KL tests want it soft)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.prompts import encode_prompt
    from tests.tiny import make_model_dir

    out_dir = Path(make_model_dir(out_dir, tokenizer_dir=tokenizer_dir, seed=0, tie_word_embeddings=False))
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    start = encode_prompt(tok, [{"role": "user", "content": "x"}])[-1]  # the "\\n" after "assistant"
    chain = [start] + tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain), f"answer tokens must be distinct for a bigram chain: {chain}"
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.normal_(0, 0.02)
        for i, (current, following) in enumerate(zip(chain[:-1], chain[1:])):
            model.model.embed_tokens.weight[current, i] = 1.0
            # RMSNorm turns the one-hot e_i into sqrt(hidden) * e_i.
            model.lm_head.weight[following, i] = sharpness / hidden**0.5
    model.save_pretrained(out_dir)
    return out_dir


def make_empty_output_dir(out_dir: str | Path, tokenizer_dir: str | Path) -> Path:
    """A tiny Qwen2 whose final norm is zero: every logit is 0, greedy picks id 0 (<|endoftext|>),
    which its generation config lists as an EOS (as Qwen2.5's does): every answer is empty."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny import make_model_dir

    out_dir = Path(make_model_dir(out_dir, tokenizer_dir=tokenizer_dir, seed=3))
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(out_dir)
    return out_dir
