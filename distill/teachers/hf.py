"""In-process Hugging Face teacher: decoding with the top-k captured on the fly.

Two decoding paths share one chooser (``make_chooser``): ``model.generate`` with a logits
processor (``generate_batch``), and ``decode_batch``, distill's own loop over a KV cache
allocated once, from which finished rows are dropped (``HFTeacher.cache_for`` picks; both write
the same tokens). What follows is said of ``generate``; ``decode_batch`` calls the model's
forward directly and hands the chooser the same raw logits.

How the raw distribution is captured: ``generate`` runs with a clean ``GenerationConfig``
(greedy, no penalties, no warpers), so the only logits processor is ``_Capture``, and the
scores it receives are exactly what ``output_logits=True`` would return (the model's raw
next-token logits, upcast to fp32). ``_Capture`` keeps the top-k of their log-softmax
(temperature 1, before any top-p) and the sampled token's log-prob, then does the sampling
itself and hands ``generate`` a one-hot choice. Two reasons for this instead of
``output_logits=True``: (1) memory: output_logits keeps [steps, batch, vocab] fp32 logits (20 GB
for 32 x 1024 steps x 152k vocab) while we keep [steps, batch, k]; (2) per-prompt seeds: HF
samples a whole batch from one RNG stream, so a prompt's response would depend on its batch
neighbours; here each row draws from its own ``torch.Generator(seed)``.

Batches are length-sorted and left-padded. Stop: EOS ids of the model's generation config and
tokenizer, or any ``params.stop`` string (the tokens up to and including the one that completes
it are kept, so ids and log-probs stay aligned; finish_reason "stop"). Device: cuda + bf16 when
available, else cpu + fp32 (recipe ``device`` / ``dtype`` override).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from distill.config import ConfigError
from distill.teachers.base import (
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    TeacherError,
    TeacherOutput,
)

if TYPE_CHECKING:
    from distill.teachers.recipe import TeacherRecipe

DTYPES = ("auto", "float32", "bfloat16", "float16")
KV_CACHES = ("auto", "shrinking", "dynamic", "static")
STATIC_MIN_NEW_TOKENS = 128  # kv_cache auto: a static cache from this many new tokens on (CPU)
PRUNE_FRACTION = 0.125  # decode_batch: drop finished rows once they are this share of the batch


def _torch():
    import torch

    return torch


def pick_device(device: str = "auto", dtype: str = "auto") -> tuple[str, Any]:
    """(device, torch dtype): cuda + bf16 when available, else cpu + fp32."""
    torch = _torch()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype not in DTYPES:
        raise ConfigError(f"teacher dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, getattr(torch, dtype)


def _logits_processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


def make_chooser(k: int, params: SamplingParams, seeds: Sequence[int], device: Any):
    """``choose(scores, step, rows)``: the next token of each row, with the raw top-k log-probs.

    ``scores`` [n, vocab] are the raw next-token logits of batch rows ``rows`` (indices into
    ``seeds``; None = all rows) at decoding step ``step``. Returns (chosen [n, 1], top-k ids
    [n, k] int32, top-k log-probs [n, k], sampled log-prob [n, 1]); the last three are None when
    ``k`` is 0. Each row samples with one uniform per step drawn from its own seed, so its tokens
    do not depend on its batch neighbours (nor on which of them are still running).
    """
    torch = _torch()
    steps = params.max_new_tokens
    uniforms = torch.stack([1.0 - torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                            for s in seeds]).to(device)

    def choose(scores: Any, step: int, rows: Any = None) -> tuple[Any, Any, Any, Any]:
        # Every full pass over [batch, vocab] counts (it is what capture costs on top of
        # sampling), so: the top-k gives the max (and the greedy choice), one exp pass gives
        # both the normalizer and, at temperature 1, the sampling weights.
        if scores.dtype != torch.float32:
            scores = scores.float()
        ids = values = None
        if k:
            values, ids = scores.topk(k, dim=-1)
            top = values[:, :1]
        else:
            top = scores.amax(dim=-1, keepdim=True)
        weights = None
        if k or params.temperature == 1.0:
            weights = torch.exp(scores - top)  # in (0, 1], no overflow
            log_norm = top + torch.log(weights.sum(dim=-1, keepdim=True))
        if params.temperature == 0:
            chosen = ids[:, :1] if k else scores.argmax(dim=-1, keepdim=True)
        else:
            if params.temperature != 1.0:
                weights = torch.sub(scores, top).div_(params.temperature).exp_()
            uniform = uniforms[:, step:step + 1] if rows is None else uniforms[rows, step:step + 1]
            chosen = _sample(weights, params.top_p, uniform)
        if not k:
            return chosen, None, None, None
        return chosen, ids.to(torch.int32), values - log_norm, scores.gather(1, chosen) - log_norm

    return choose


def make_capture(k: int, params: SamplingParams, seeds: Sequence[int], device: Any):
    """A LogitsProcessor for ``model.generate``: records what ``make_chooser`` returns each step
    and forces its choice."""
    base = _logits_processor_base()
    choose = make_chooser(k, params, seeds, device)

    class _Capture(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.step = 0
            self.topk_ids: list[Any] = []
            self.topk_logprobs: list[Any] = []
            self.sampled_logprobs: list[Any] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            if scores.dtype != _torch().float32:  # generate() upcasts already; keep it true for any caller
                scores = scores.float()
            chosen, ids, logprobs, sampled = choose(scores, self.step)
            if k:
                self.topk_ids.append(ids)
                self.topk_logprobs.append(logprobs)
                self.sampled_logprobs.append(sampled)
            self.step += 1
            # generate() picks the argmax next: make it our choice. In place (no [batch, vocab]
            # copy) is safe because output_logits/output_scores are never requested.
            return scores.scatter_(1, chosen, float("inf"))

    return _Capture()


def _sample(weights: Any, top_p: float, uniform: Any) -> Any:
    """Inverse-CDF sampling from unnormalized [B, V] weights with nucleus ``top_p``; [B, 1] ids.

    ``uniform`` [B, 1] in (0, 1] comes from each row's own generator.
    """
    torch = _torch()
    if top_p < 1.0:
        sorted_weights, order = weights.sort(dim=-1, descending=True)
        cum = sorted_weights.cumsum(dim=-1)
        # drop tokens once the mass before them reaches top_p (the top token always stays)
        sorted_weights.masked_fill_(cum - sorted_weights > top_p * cum[:, -1:], 0.0)
        cdf = sorted_weights.cumsum(dim=-1)
        pick = torch.searchsorted(cdf, (uniform * cdf[:, -1:]).to(cdf.dtype)).clamp_(max=cdf.shape[-1] - 1)
        return order.gather(1, pick)
    cdf = weights.cumsum(dim=-1)
    return torch.searchsorted(cdf, (uniform * cdf[:, -1:]).to(cdf.dtype)).clamp_(max=cdf.shape[-1] - 1)


def stop_window(stop: Sequence[str]) -> int:
    """How many trailing tokens to decode to see any stop string whole (every token decodes to
    >= 0 characters, most to >= 1)."""
    return max(len(s) for s in stop) + 8


def tail_has_stop(tokenizer: Any, tail_ids: Sequence[int], stop: Sequence[str]) -> bool:
    """Whether the decoded tail of a response contains one of the stop strings."""
    tail = tokenizer.decode(list(tail_ids))
    return any(s in tail for s in stop)


def make_stop_criteria(tokenizer: Any, stop: Sequence[str], prompt_len: int, batch: int):
    """StoppingCriteria that ends a row once its decoded tail contains a stop string; records the step."""
    torch = _torch()
    from transformers import StoppingCriteria

    window = stop_window(stop)

    class _StopStrings(StoppingCriteria):
        def __init__(self) -> None:
            self.stopped_at = [-1] * batch  # number of generated tokens when the stop string completed

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            generated = input_ids.shape[1] - prompt_len
            for row in range(input_ids.shape[0]):
                if self.stopped_at[row] >= 0:
                    done[row] = True
                    continue
                if tail_has_stop(tokenizer, input_ids[row, max(prompt_len, input_ids.shape[1] - window):].tolist(), stop):
                    self.stopped_at[row] = generated
                    done[row] = True
            return done

    return _StopStrings()


def cache_kwarg(model: Any) -> str:
    """The keyword that hands a model its KV cache: ``cache`` from transformers 5.2x on
    (``past_key_values`` is deprecated there, removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _row(response_ids: Any, topk_ids: Any, topk_logprobs: Any, sampled_logprobs: Any, length: int,
         reason: str) -> dict[str, Any]:
    """One decoded row, trimmed to ``length`` generated tokens (numpy; capture arrays None without capture)."""
    return {
        "response_ids": response_ids[:length].astype(np.int32),
        "topk_ids": topk_ids[:length].astype(np.int32) if topk_ids is not None else None,
        "topk_logprobs": topk_logprobs[:length].astype(np.float32) if topk_logprobs is not None else None,
        "sampled_logprobs": sampled_logprobs[:length].astype(np.float32) if sampled_logprobs is not None else None,
        "finish_reason": reason,
    }


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    torch = _torch()
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
                   params: SamplingParams, *, eos_ids: Sequence[int], pad_id: int,
                   cache: str = "dynamic") -> list[dict[str, Any]]:
    """Generate one left-padded batch with capture; one dict per row (numpy arrays, trimmed).

    ``cache``: ``dynamic`` grows the KV cache by concatenation each step (every step copies it);
    ``static`` allocates it once for prompt + max_new_tokens and writes in place. Same tokens.
    """
    torch = _torch()
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    device = next(model.parameters()).device
    input_ids, attention_mask = _left_pad(prompts, pad_id, device)
    k = params.top_k_logprobs
    capture = make_capture(k, params, seeds, device)
    stopping = StoppingCriteriaList()
    stop_strings = None
    if params.stop:
        stop_strings = make_stop_criteria(tokenizer, params.stop, input_ids.shape[1], len(prompts))
        stopping.append(stop_strings)
    extra: dict[str, Any] = {}
    if cache == "static":
        from transformers import StaticCache

        # Sized for this batch. (generate's own cache_implementation="static" keeps the longest
        # length any earlier call used: after the demo's 560-position prompt-writing batches every
        # short answering batch attended over 560 positions, twice as slow as the dynamic cache.)
        extra[cache_kwarg(model)] = StaticCache(config=model.config.get_text_config(decoder=True),
                                               max_cache_len=input_ids.shape[1] + params.max_new_tokens)
    # disable_compile: a static cache would otherwise trigger torch.compile on a GPU (minutes).
    config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False, num_beams=1, disable_compile=True,
                              eos_token_id=list(eos_ids), pad_token_id=pad_id, return_dict_in_generate=True)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                             logits_processor=LogitsProcessorList([capture]), stopping_criteria=stopping, **extra)
    generated = out.sequences[:, input_ids.shape[1]:].cpu().numpy().astype(np.int32)
    num_steps = generated.shape[1]
    if k:
        topk_ids = torch.stack(capture.topk_ids, dim=1).cpu().numpy()
        topk_lp = torch.stack(capture.topk_logprobs, dim=1).float().cpu().numpy()
        sampled_lp = torch.cat(capture.sampled_logprobs, dim=1).float().cpu().numpy()
    eos = np.isin(generated, np.asarray(list(eos_ids), dtype=np.int32))
    rows = []
    for r in range(len(prompts)):
        length, reason = num_steps, "length"
        hits = np.flatnonzero(eos[r])
        if hits.size:
            length, reason = int(hits[0]) + 1, "stop"
        if stop_strings is not None and 0 <= stop_strings.stopped_at[r] <= length:
            length, reason = stop_strings.stopped_at[r], "stop"
        if reason == "length" and length < params.max_new_tokens:  # pragma: no cover - generate invariant
            raise AssertionError(f"row {r} ended after {length} tokens without EOS or stop string")
        rows.append(_row(generated[r], topk_ids[r] if k else None, topk_lp[r] if k else None,
                         sampled_lp[r] if k else None, length, reason))
    return rows


def _growing_cache(model: Any, capacity: int) -> Any:
    """A KV cache that allocates ``capacity`` positions once per layer, writes in place, and hands
    attention only the positions written so far; ``batch_select_indices`` drops finished rows."""
    torch = _torch()
    from transformers.cache_utils import Cache, DynamicLayer

    class _GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            batch, heads, _, key_dim = key_states.shape
            self.key_buffer = key_states.new_empty(batch, heads, capacity, key_dim)
            self.value_buffer = value_states.new_empty(batch, value_states.shape[1], capacity, value_states.shape[-1])
            self.length = 0
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > capacity:  # pragma: no cover - decode_batch sizes the cache for prompt + max_new_tokens
                raise AssertionError(f"KV cache of {capacity} positions overflowed")
            self.key_buffer[:, :, self.length:end] = key_states
            self.value_buffer[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices: Any) -> None:
            if not self.is_initialized:
                return
            for name in ("key_buffer", "value_buffer"):
                old = getattr(self, name)
                new = old.new_empty(len(indices), *old.shape[1:])
                torch.index_select(old[:, :, :self.length], 0, indices, out=new[:, :, :self.length])
                setattr(self, name, new)
            self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]

    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[_GrowingLayer() for _ in range(layers)])


def shrinking_supported(model: Any) -> bool:
    """Whether ``decode_batch`` can run ``model``: every layer full attention (its cache holds no
    sliding-window or linear-attention state), and a forward that takes explicit position ids, a
    cache and ``logits_to_keep`` (transformers' own decoder-only models do)."""
    config = model.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None) or ["full_attention"]
    if not all(t == "full_attention" for t in types) or getattr(config, "use_sliding_window", False):
        return False
    accepted = inspect.signature(type(model).forward).parameters
    return {"position_ids", "logits_to_keep", cache_kwarg(model)} <= set(accepted)


def decode_batch(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], seeds: Sequence[int],
                 params: SamplingParams, *, eos_ids: Sequence[int], pad_id: int,
                 prune_fraction: float = PRUNE_FRACTION) -> list[dict[str, Any]]:
    """``generate_batch``'s rows from a decoding loop of our own that drops finished rows.

    ``model.generate`` runs every row until the batch's longest one ends; on the demo teacher's
    prompt writing that is ~20% of the work spent on rows already done, and its static cache
    attends over all prompt + max_new_tokens positions from the first step. Here the KV cache is
    allocated once, attention sees the positions written so far, and once finished rows make up
    ``prune_fraction`` of the batch they leave it (one copy of the remaining rows' cache).
    Same tokens and log-probs as ``generate_batch`` up to float rounding
    (tests/teachers/test_hf.py).
    """
    torch = _torch()
    device = next(model.parameters()).device
    batch = len(prompts)
    input_ids, attention_mask = _left_pad(prompts, pad_id, device)
    steps, k = params.max_new_tokens, params.top_k_logprobs
    choose = make_chooser(k, params, seeds, device)
    cache = _growing_cache(model, input_ids.shape[1] + steps)
    cache_arg = {cache_kwarg(model): cache}
    eos = torch.tensor(sorted(set(int(e) for e in eos_ids)), dtype=torch.long, device=device)
    window = stop_window(params.stop) if params.stop else 0

    tokens = np.full((batch, steps), pad_id, dtype=np.int64)
    if k:
        topk_ids = torch.zeros((batch, steps, k), dtype=torch.int32, device=device)
        topk_lp = torch.zeros((batch, steps, k), dtype=torch.float32, device=device)
        sampled_lp = torch.zeros((batch, steps), dtype=torch.float32, device=device)
    lengths = np.full(batch, steps, dtype=np.int64)
    reasons = ["length"] * batch
    rows = torch.arange(batch, device=device)  # the original index of each row still in the batch
    live = torch.ones(batch, dtype=torch.bool, device=device)  # rows in the batch not yet finished
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=True, logits_to_keep=1, **cache_arg).logits[:, -1, :]
        positions = position_ids[:, -1:] + 1
        for step in range(steps):
            chosen, ids, logprobs, sampled = choose(logits, step, rows)
            live_idx = live.nonzero()[:, 0]
            owners = rows[live_idx]
            owners_np = owners.cpu().numpy()
            tokens[owners_np, step] = chosen[live_idx, 0].cpu().numpy()
            if k:
                topk_ids[owners, step] = ids[live_idx]
                topk_lp[owners, step] = logprobs[live_idx]
                sampled_lp[owners, step] = sampled[live_idx, 0]
            finished = torch.isin(chosen[:, 0], eos) & live
            if window:  # a stop string completed by this token also ends the row (the token is kept)
                for i, owner in zip(live_idx.tolist(), owners_np.tolist()):
                    if tail_has_stop(tokenizer, tokens[owner, max(0, step + 1 - window):step + 1].tolist(), params.stop):
                        finished[i] = True
            for owner in rows[finished].tolist():
                lengths[owner], reasons[owner] = step + 1, "stop"
            live &= ~finished
            remaining = int(live.sum())
            if remaining == 0 or step == steps - 1:
                break
            if remaining < len(live) and len(live) - remaining >= prune_fraction * len(live):
                keep = live.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                attention_mask, positions, rows = attention_mask[keep], positions[keep], rows[keep]
                chosen, live = chosen[keep], live[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
            logits = model(input_ids=chosen, attention_mask=attention_mask, position_ids=positions,
                           use_cache=True, **cache_arg).logits[:, -1, :]
            positions = positions + 1
    if k:
        topk_ids_np, topk_lp_np, sampled_np = topk_ids.cpu().numpy(), topk_lp.cpu().numpy(), sampled_lp.cpu().numpy()
    return [_row(tokens[r], topk_ids_np[r] if k else None, topk_lp_np[r] if k else None, sampled_np[r] if k else None,
                 int(lengths[r]), reasons[r]) for r in range(batch)]


def score_batch(model: Any, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], top_k: int,
                pad_id: int) -> list[dict[str, Any]]:
    """Teacher-forced top-k at every response position of left-padded (prompt + response) rows."""
    torch = _torch()
    device = next(model.parameters()).device
    full = [list(p) + list(r) for p, r in zip(prompts, responses)]
    input_ids, attention_mask = _left_pad(full, pad_id, device)
    keep = max(len(r) for r in responses) + 1
    # positions count real tokens only, as generate() does for left-padded rows
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=keep).logits
    rows = []
    for i, response in enumerate(responses):
        num_tokens = len(response)
        # with left padding every row ends at the right edge: position -1-j predicts token T-j
        row_logits = logits[i, keep - 1 - num_tokens: keep - 1].float()
        logprobs = torch.log_softmax(row_logits, dim=-1)
        values, ids = logprobs.topk(top_k, dim=-1)
        target = torch.tensor(list(response), dtype=torch.long, device=device)[:, None]
        rows.append({
            "topk_ids": ids.to(torch.int32).cpu().numpy(),
            "topk_logprobs": values.cpu().numpy().astype(np.float32),
            "sampled_logprobs": logprobs.gather(1, target)[:, 0].cpu().numpy().astype(np.float32),
        })
    return rows


class HFTeacher:
    """A local (or cached) Hugging Face causal LM as the teacher. The model loads on first use."""

    backend = "hf"
    black_box = False
    can_score = True
    structured_output = False  # no constrained decoding here: the meta-prompt and the parser carry the output contract

    def __init__(self, model: str, *, name: str | None = None, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8, max_context: int | None = None,
                 trust_remote_code: bool = False, kv_cache: str = "auto") -> None:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(model)
        if (model.startswith((".", "/", "~")) or path.exists()) and not (path / "config.json").is_file():
            raise ConfigError(f"--teacher: {model}: no such model directory (expected a folder with config.json)")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if kv_cache not in KV_CACHES:
            raise ConfigError(f"teacher hf.kv_cache must be one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
        self.model_id = model
        self.name = name or path.name
        self.revision = revision
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.device, self.dtype = pick_device(device, dtype)
        self.kv_cache = kv_cache
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
            self.config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
        except OSError as exc:
            raise ConfigError(f"--teacher: cannot load '{model}': {exc}") from None
        context = getattr(self.config, "max_position_embeddings", None)
        self.max_context = int(max_context or context or 4096)
        self.pad_id, self.eos_ids = self._special_ids()
        self._model: Any = None

    @classmethod
    def from_recipe(cls, recipe: "TeacherRecipe", **overrides: Any) -> "HFTeacher":
        """Build from a teacher recipe (its top-level hf keys, then its ``hf:`` block); ``overrides``
        (e.g. batch_size from --batch-size) win."""
        known = ("revision", "device", "dtype", "batch_size", "max_context", "trust_remote_code", "kv_cache")
        kwargs: dict[str, Any] = {k: getattr(recipe, k) for k in known if getattr(recipe, k) is not None}
        kwargs.update(recipe.block("hf"))
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(kwargs) - set(known)
        if unknown:
            raise ConfigError(f"{recipe.source}: unknown hf option(s) {sorted(unknown)}; known: {', '.join(known)}")
        return cls(recipe.model, name=recipe.name or None, **kwargs)

    def _special_ids(self) -> tuple[int, tuple[int, ...]]:
        from transformers import GenerationConfig

        eos: list[int] = []
        try:
            gen = GenerationConfig.from_pretrained(self.model_id, revision=self.revision)
            value = gen.eos_token_id
            eos += list(value) if isinstance(value, (list, tuple)) else ([value] if value is not None else [])
        except OSError:
            gen = None
        if self.tokenizer.eos_token_id is not None:
            eos.append(int(self.tokenizer.eos_token_id))
        if not eos:
            raise ConfigError(f"--teacher: {self.model_id}: neither the tokenizer nor generation_config.json names an EOS token")
        pad = self.tokenizer.pad_token_id
        if pad is None and gen is not None and gen.pad_token_id is not None:
            pad = gen.pad_token_id
        return int(pad if pad is not None else eos[0]), tuple(dict.fromkeys(int(e) for e in eos))

    @property
    def model(self) -> Any:
        if self._model is None:
            from transformers import AutoModelForCausalLM, GenerationConfig

            try:
                model = AutoModelForCausalLM.from_pretrained(self.model_id, revision=self.revision, dtype=self.dtype,
                                                             trust_remote_code=self.trust_remote_code)
            except Exception as exc:  # OSError, safetensors' own errors, a config transformers rejects
                raise TeacherError(f"--teacher {self.model_id}: cannot load the model: {type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())[:400]}") from None
            # A clean generation config: the checkpoint's (temperature, top_k, repetition_penalty...)
            # would otherwise be merged into ours and warp the logits before our capture.
            model.generation_config = GenerationConfig(eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id)
            self._model = model.to(self.device).eval()
        return self._model

    def load(self, score: bool = False) -> None:
        self.model  # noqa: B018 (loads the weights, or raises TeacherError)

    def cache_for(self, params: SamplingParams) -> str:
        """How one generate call decodes. ``auto`` on CPU: ``shrinking`` (``decode_batch``: a KV
        cache allocated once and filled in place, finished rows dropped from the batch) for models
        whose layers all use full attention (faster than both others on CPU:
        bench/generation_cache.md). Other models (sliding-window or linear-attention layers) go through ``model.generate``:
        ``static`` for long generations (>= STATIC_MIN_NEW_TOKENS), ``dynamic`` for short ones.
        On a GPU ``auto`` stays ``dynamic`` (the others are not measured there; name one to use
        it). The same tokens either way, up to float rounding."""
        if self.kv_cache != "auto":
            if self.kv_cache == "shrinking" and not shrinking_supported(self.model):
                raise ConfigError(f"teacher hf.kv_cache: shrinking needs full-attention layers and a forward taking "
                                  f"position_ids, a cache and logits_to_keep; {self.model_id} has sliding-window or "
                                  "linear-attention layers or another forward (use auto, dynamic or static)")
            return self.kv_cache
        if self.device != "cpu":
            return "dynamic"
        if shrinking_supported(self.model):
            return "shrinking"
        return "static" if params.max_new_tokens >= STATIC_MIN_NEW_TOKENS else "dynamic"

    def fingerprint(self) -> dict[str, Any]:
        import torch
        import transformers

        from distill.fingerprint import weights_fingerprint

        path = Path(self.model_id)
        weights = weights_fingerprint(path) if path.is_dir() else None
        return {"name": self.name, "model": self.model_id, "revision": self.revision, "weights_sha256": weights,
                "backend": "hf", "backend_version": f"transformers {transformers.__version__}, torch {torch.__version__}",
                "dtype": str(self.dtype).replace("torch.", ""), "black_box": False}

    def _batches(self, requests: Sequence[Any]) -> Iterator[list[Any]]:
        ordered = sorted(requests, key=lambda r: (len(r.prompt_ids), r.key))  # length-sorted: little padding
        for start in range(0, len(ordered), self.batch_size):
            yield ordered[start:start + self.batch_size]

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> Iterator[TeacherOutput]:
        for request in requests:
            if len(request.prompt_ids) + params.max_new_tokens > self.max_context:
                raise ConfigError(f"request {request.key}: prompt of {len(request.prompt_ids)} tokens + "
                                  f"max_new_tokens {params.max_new_tokens} exceeds the teacher context {self.max_context}")
        if not requests:
            return  # nothing to decode: do not load the model to pick a decoding path
        cache = self.cache_for(params)
        for batch in self._batches(requests):
            if cache == "shrinking":
                rows = decode_batch(self.model, self.tokenizer, [r.prompt_ids for r in batch], [r.seed for r in batch],
                                    params, eos_ids=self.eos_ids, pad_id=self.pad_id)
            else:
                rows = generate_batch(self.model, self.tokenizer, [r.prompt_ids for r in batch], [r.seed for r in batch],
                                      params, eos_ids=self.eos_ids, pad_id=self.pad_id, cache=cache)
            for request, row in zip(batch, rows):
                yield TeacherOutput(key=request.key, prompt_ids=np.asarray(request.prompt_ids, dtype=np.int32),
                                    text=self.tokenizer.decode(row["response_ids"].tolist(), skip_special_tokens=True),
                                    **row)

    def score(self, requests: Sequence[ScoreRequest], top_k: int) -> Iterator[TeacherOutput]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 for scoring, got {top_k}")
        for batch in self._batches([r for r in requests if len(r.response_ids)]):
            rows = score_batch(self.model, [r.prompt_ids for r in batch], [r.response_ids for r in batch], top_k, self.pad_id)
            for request, row in zip(batch, rows):
                response = np.asarray(request.response_ids, dtype=np.int32)
                yield TeacherOutput(key=request.key, prompt_ids=np.asarray(request.prompt_ids, dtype=np.int32),
                                    response_ids=response, finish_reason="stop",
                                    text=self.tokenizer.decode(response.tolist(), skip_special_tokens=True), **row)
        for request in requests:  # empty responses have no positions to score
            if not len(request.response_ids):
                empty = np.zeros((0, top_k), dtype=np.int32)
                yield TeacherOutput(key=request.key, prompt_ids=np.asarray(request.prompt_ids, dtype=np.int32),
                                    response_ids=np.zeros(0, dtype=np.int32), topk_ids=empty,
                                    topk_logprobs=empty.astype(np.float32), sampled_logprobs=np.zeros(0, np.float32),
                                    finish_reason="stop")

    def close(self) -> None:
        self._model = None
