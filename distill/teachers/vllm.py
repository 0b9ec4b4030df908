"""vLLM teacher: the offline ``vllm.LLM`` engine, tensor / pipeline / data parallel.

Prompts go in as the token ids ``distill.prompts.encode_prompt`` built, so the stored prompt ids
are exactly what the teacher saw, and detokenization is off (we store ids; the text is decoded
once, from the ids). Log-probs come from the RAW distribution (``logprobs_mode="raw_logprobs"``:
temperature 1, before top-p/top-k), in the flat form vLLM offers for low GC cost; the dict form
(``list[dict[int, Logprob]]``) is handled too. vLLM returns k or k+1 candidates per position (the
sampled token is added when it is outside the top k); we keep the k best, sorted descending.

Requests run in chunks of ``chunk_size`` (memory stays bounded: one chunk's outputs at a time),
each with its own seed, so a sample does not depend on its neighbours. A prompt the engine would
reject (longer than ``max_model_len`` - 1) is filtered out before the engine sees it, because
one invalid prompt makes vLLM fail the whole call; it is counted and warned about.

``score`` teacher-forces (prompt, response) pairs through ``prompt_logprobs`` (its first entry
is None: nothing predicts the first token). Its requests skip reading the prefix cache
(``skip_reading_prefix_cache``), so every position is computed while the engine keeps prefix
caching for generation: generate and score share one engine (augmentation alternates them every
round; restarting a large engine for each would cost minutes).

Data parallel: ``data_parallel_size`` > 1 starts that many engine processes, each owning
``tensor_parallel_size * pipeline_parallel_size`` GPUs; chunks are dealt to whichever is free.
Across nodes use ``distributed_executor_backend: ray`` for one big TP/PP engine, or run one
``distill generate --shard i/N`` worker per node (docs/teachers.md).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from distill.config import ConfigError
from distill.teachers.base import (
    GenerationRequest,
    SamplingParams,
    ScoreRequest,
    TeacherError,
    TeacherOutput,
    backend_settings,
)
from distill.teachers.logprobs import finish_reason, score_positions, topk_arrays

if TYPE_CHECKING:
    from distill.teachers.recipe import TeacherRecipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VLLMEngineConfig:
    """The recipe's ``vllm:`` block: how the engine is laid out and sized."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    dtype: str = "auto"  # auto (the checkpoint's, bf16 for Qwen/Llama) | bfloat16 | float16
    max_model_len: int | None = None  # None: the model's own
    gpu_memory_utilization: float = 0.90
    max_logprobs: int = 20  # must be >= --top-k; vLLM's cap on returned log-probs
    enable_prefix_caching: bool = True  # score requests skip reading the cache (skip_reading_prefix_cache)
    max_num_seqs: int | None = None  # concurrent sequences per engine (throughput knob)
    max_num_batched_tokens: int | None = None
    distributed_executor_backend: str | None = None  # "mp" (one node) | "ray" (multi-node)
    enforce_eager: bool = False
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    trust_remote_code: bool = False
    seed: int = 0
    chunk_size: int = 512  # requests per engine call: bounds host memory for outputs
    max_attempts: int = 3  # engine-side abort/error: resubmit this many times in all
    engine_args: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM as is

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "max_logprobs",
                     "chunk_size", "max_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"vllm.{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"vllm.max_model_len must be >= 2, got {self.max_model_len}")
        if self.distributed_executor_backend not in (None, "mp", "ray", "uni", "external_launcher"):
            raise ValueError(f"vllm.distributed_executor_backend must be mp, ray, uni or external_launcher, "
                             f"got {self.distributed_executor_backend!r}")

    def llm_kwargs(self, model: str, tokenizer: str, revision: str | None, *, prefix_caching: bool) -> dict[str, Any]:
        """Keyword arguments for one ``vllm.LLM`` (one data-parallel replica)."""
        kwargs: dict[str, Any] = dict(
            model=model,
            tokenizer=tokenizer,
            revision=revision,
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_logprobs=self.max_logprobs,
            logprobs_mode="raw_logprobs",
            enable_prefix_caching=prefix_caching,
            kv_cache_dtype=self.kv_cache_dtype,
            enforce_eager=self.enforce_eager,
            trust_remote_code=self.trust_remote_code,
            seed=self.seed,
        )
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "distributed_executor_backend",
                     "quantization"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        kwargs.update(self.engine_args)
        return kwargs


# ------------------------------------------------------------------------------------------
# Output conversion: pure functions of vLLM's output objects (the contract tests feed them real
# RequestOutput / CompletionOutput / Logprob / FlatLogprobs built by vllm itself).


def _position_arrays(position_logprobs: Any, token_ids: Sequence[int], k: int, where: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-position log-probs (``list[dict[int, Logprob]]`` or ``FlatLogprobs``) of the tokens
    ``token_ids`` -> top-k ids [T, k] int32, top-k logprobs [T, k] float32 sorted descending,
    and the log-prob of each token in ``token_ids`` [T] float32 (distill.teachers.logprobs).

    Each position holds the chosen token plus the top k (k entries when the chosen token is in
    the top k, k+1 otherwise; the flat form keeps a duplicate instead).
    """
    num_tokens = len(token_ids)
    if len(position_logprobs) != num_tokens:
        raise TeacherError(f"{where}: {len(position_logprobs)} log-prob positions for {num_tokens} tokens")
    if not isinstance(position_logprobs, list) and num_tokens:
        fast = _flat_positions(position_logprobs, token_ids, k)
        if fast is not None:
            return fast
    if isinstance(position_logprobs, list):
        rows = (((tid, lp.logprob, lp.rank) for tid, lp in (step or {}).items()) for step in position_logprobs)
    else:  # FlatLogprobs: read its flat lists directly, no per-entry Logprob objects
        flat = position_logprobs
        rows = (zip(flat.token_ids[s:e], flat.logprobs[s:e], flat.ranks[s:e])
                for s, e in zip(flat.start_indices, flat.end_indices))
    return topk_arrays(rows, k, where, chosen=token_ids)


def _flat_positions(flat: Any, token_ids: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Vectorized FlatLogprobs conversion for the layout the engine writes: per position the
    chosen token, then ranks 1..k. The conversion runs while the GPU waits for the next chunk,
    so it matters at 70B throughput. None (use the general path) for any other layout."""
    num_tokens = len(token_ids)
    width = k + 1
    starts = np.asarray(flat.start_indices, dtype=np.int64)
    ends = np.asarray(flat.end_indices, dtype=np.int64)
    base = int(starts[0])
    if not ((ends - starts) == width).all() or not (starts == base + width * np.arange(num_tokens)).all():
        return None
    span = slice(base, base + width * num_tokens)
    ids = np.asarray(flat.token_ids[span], dtype=np.int64).reshape(num_tokens, width)
    ranks = flat.ranks[span]
    if any(r is None for r in ranks[1::width]):
        return None
    ranks = np.asarray(ranks, dtype=object).reshape(num_tokens, width)
    if not (ranks[:, 1:] == np.arange(1, width)).all() or not (ids[:, 0] == np.asarray(token_ids)).all():
        return None
    top_ids = ids[:, 1:]
    if k > 1 and (np.diff(np.sort(top_ids, axis=1), axis=1) == 0).any():
        return None  # repeated ids within a position: let the general path merge them
    logprobs = np.asarray(flat.logprobs[span], dtype=np.float64).reshape(num_tokens, width)
    top_lps = logprobs[:, 1:]
    order = np.argsort(-top_lps, axis=1, kind="stable")  # already rank order; keeps it exact
    return (np.take_along_axis(top_ids, order, axis=1).astype(np.int32),
            np.take_along_axis(top_lps, order, axis=1).astype(np.float32),
            logprobs[:, 0].astype(np.float32))


def completion_to_output(key: str, prompt_ids: Sequence[int], request_output: Any, k: int,
                         tokenizer: Any = None) -> TeacherOutput | None:
    """One vLLM ``RequestOutput`` (n=1) -> TeacherOutput; None when it must be resubmitted."""
    where = f"vllm request {key}"
    if len(request_output.outputs) != 1:
        raise TeacherError(f"{where}: expected one completion, got {len(request_output.outputs)}")
    completion = request_output.outputs[0]
    ours, raw = finish_reason(completion.finish_reason)
    if ours is None:
        logger.warning("%s finished with %r; resubmitting", where, raw)
        return None
    response_ids = [int(i) for i in completion.token_ids]
    if k:
        if completion.logprobs is None:
            raise TeacherError(f"{where}: no log-probs returned (was logprobs={k} dropped?)")
        topk_ids, topk_logprobs, sampled = _position_arrays(completion.logprobs, response_ids, k, where)
    else:
        topk_ids = topk_logprobs = sampled = None
    text = completion.text or (tokenizer.decode(response_ids, skip_special_tokens=True) if tokenizer else "")
    return TeacherOutput(
        key=key, prompt_ids=np.asarray(prompt_ids, dtype=np.int32), response_ids=np.asarray(response_ids, dtype=np.int32),
        topk_ids=topk_ids, topk_logprobs=topk_logprobs, sampled_logprobs=sampled, finish_reason=ours, text=text,
        extra={"vllm_finish_reason": raw} if raw else {},
    )


def prompt_logprobs_to_output(key: str, prompt_len: int, response_ids: Sequence[int], request_output: Any,
                              k: int) -> TeacherOutput:
    """A scored (prompt + response) ``RequestOutput`` -> TeacherOutput for the response positions.

    ``prompt_logprobs[i]`` is the distribution that predicted token i; entry 0 is None.
    """
    where = f"vllm score request {key}"
    entries = score_positions(request_output.prompt_logprobs, prompt_len, len(response_ids), where)
    topk_ids, topk_logprobs, chosen = _position_arrays(entries, response_ids, k, where)
    prompt_ids = list(request_output.prompt_token_ids[:prompt_len])
    return TeacherOutput(
        key=key, prompt_ids=np.asarray(prompt_ids, dtype=np.int32), response_ids=np.asarray(response_ids, dtype=np.int32),
        topk_ids=topk_ids, topk_logprobs=topk_logprobs, sampled_logprobs=chosen, finish_reason="stop",
    )


# ------------------------------------------------------------------------------------------
# Engine calls


def default_engine_factory(kwargs: dict[str, Any]) -> Any:
    import vllm

    return vllm.LLM(**kwargs)


def vllm_sampling_params(**kwargs: Any) -> Any:
    import vllm

    if isinstance(kwargs.get("structured_outputs"), dict):
        from vllm.sampling_params import StructuredOutputsParams

        kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
    return vllm.SamplingParams(**kwargs)


@dataclass
class _Chunk:
    """One engine call's worth of requests: (key, prompt ids, sampling kwargs, response ids)."""

    items: list[tuple[str, list[int], dict[str, Any], list[int] | None]]
    k: int
    score: bool


def run_chunk(engine: Any, chunk: _Chunk, make_params: Callable[..., Any], tokenizer: Any,
              max_attempts: int) -> list[TeacherOutput]:
    """Run one chunk on ``engine`` (a ``vllm.LLM``); resubmit aborted requests; convert."""
    pending = list(chunk.items)
    outputs: list[TeacherOutput] = []
    for attempt in range(max_attempts):
        prompts = [{"prompt_token_ids": ids} for _, ids, _, _ in pending]
        params = [make_params(**kw) for _, _, kw, _ in pending]
        results = engine.generate(prompts, params, use_tqdm=False)
        retry = []
        for item, result in zip(pending, results):
            key, ids, _, response = item
            if list(result.prompt_token_ids) != ids:
                raise TeacherError(f"vllm request {key}: engine returned another prompt's output")
            if chunk.score:
                scored = prompt_logprobs_to_output(key, len(ids) - len(response), response, result, chunk.k)
                if tokenizer is not None:
                    scored.text = tokenizer.decode(response, skip_special_tokens=True)
                outputs.append(scored)
                continue
            out = completion_to_output(key, ids, result, chunk.k, tokenizer)
            if out is None:
                retry.append(item)
            else:
                outputs.append(out)
        pending = retry
        if not pending:
            return outputs
    raise TeacherError(f"{len(pending)} request(s) still aborted after {max_attempts} attempts, "
                              f"e.g. {pending[0][0]}; re-run the same command to resume")


def _dp_worker(rank: int, gpus: str | None, factory: Callable, params_factory: Callable, llm_kwargs: dict[str, Any],
               max_attempts: int, inbox: Any, outbox: Any) -> None:
    """A data-parallel replica: its own engine on its own GPUs, chunks in, outputs out."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        engine = factory(llm_kwargs)
        while True:
            job = inbox.get()
            if job is None:
                return
            index, chunk = job
            # Text is decoded in the parent (it has the tokenizer): replicas send ids only.
            outbox.put((rank, index, run_chunk(engine, chunk, params_factory, None, max_attempts)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.put((rank, -1, RuntimeError(f"data-parallel replica {rank}: {type(exc).__name__}: {exc}")))


# ------------------------------------------------------------------------------------------
# The teacher


class VLLMTeacher:
    """See the module docstring. Build with ``from_recipe``; the engine starts on first use."""

    backend = "vllm"
    black_box = False
    can_score = True
    structured_output = True  # SamplingParams.json_schema -> vLLM structured outputs (guided decoding)

    def __init__(self, name: str, model: str, tokenizer: Any, tokenizer_source: str, config: VLLMEngineConfig,
                 max_context: int, revision: str | None = None,
                 engine_factory: Callable[[dict[str, Any]], Any] = default_engine_factory,
                 params_factory: Callable[..., Any] = vllm_sampling_params) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_source = tokenizer_source
        self.config = config
        self.max_context = max_context
        self.revision = revision
        # Both factories are module-level callables (picklable for data-parallel replicas);
        # tests swap in an engine that needs no GPU.
        self.engine_factory = engine_factory
        self.params_factory = params_factory
        self.stats: dict[str, Any] = {"skipped_overlength": 0, "skipped_keys": []}
        self._engine: Any = None
        self._replicas: list[Any] = []

    @classmethod
    def from_recipe(cls, recipe: "TeacherRecipe", **overrides: Any) -> "VLLMTeacher":
        """Build from a teacher recipe; ``overrides`` replace keys of its ``vllm:`` block
        (``None`` values are ignored). The engine itself starts on the first request."""
        from transformers import AutoTokenizer

        config = backend_settings(recipe, "vllm", VLLMEngineConfig, overrides, batch_size_key="chunk_size")
        tokenizer_source = recipe.tokenizer or recipe.model
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, revision=recipe.tokenizer_revision)
        max_context = int(config.max_model_len or recipe.max_context or 32768)
        return cls(name=recipe.name or recipe.model, model=recipe.model, tokenizer=tokenizer,
                   tokenizer_source=tokenizer_source, config=config, max_context=max_context,
                   revision=recipe.revision)

    def fingerprint(self) -> dict[str, Any]:
        try:
            from importlib.metadata import version

            vllm_version = version("vllm")
        except Exception:  # noqa: BLE001 - not installed: fingerprinting a dry configuration
            vllm_version = None
        cfg = self.config
        return {
            "model": self.model, "revision": self.revision, "backend": self.backend,
            "backend_version": f"vllm {vllm_version}", "black_box": False,
            # Numerics, not layout: a run resumed on another TP/DP layout (or a --shard worker on
            # a node with fewer GPUs) is the same teacher.
            "dtype": cfg.dtype, "quantization": cfg.quantization, "kv_cache_dtype": cfg.kv_cache_dtype,
            "logprobs_mode": "raw_logprobs",
        }

    # -- engines ---------------------------------------------------------------------------

    def _llm_kwargs(self, prefix_caching: bool) -> dict[str, Any]:
        kwargs = self.config.llm_kwargs(self.model, self.tokenizer_source, self.revision,
                                        prefix_caching=prefix_caching and self.config.enable_prefix_caching)
        # We pass token ids and decode once ourselves; vLLM's own tokenizer is still loaded for
        # EOS and stop handling.
        kwargs.setdefault("max_model_len", self.max_context)
        return kwargs

    def load(self, score: bool = False) -> None:
        self._ensure_engines()

    def _ensure_engines(self) -> None:
        """Start the engine(s) once; generate and score share them (see the module docstring)."""
        if self._engine is not None or self._replicas:
            return
        kwargs = self._llm_kwargs(True)
        if self.config.data_parallel_size == 1:
            self._engine = self.engine_factory(kwargs)
        else:
            self._start_replicas(kwargs)

    def _start_replicas(self, kwargs: dict[str, Any]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # CUDA cannot be initialised in a forked child
        per_replica = self.config.tensor_parallel_size * self.config.pipeline_parallel_size
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else None
        self._outbox = ctx.Queue()
        for rank in range(self.config.data_parallel_size):
            gpus = None
            if devices is not None or self.engine_factory is default_engine_factory:
                pool = devices if devices is not None else [str(i) for i in range(per_replica * self.config.data_parallel_size)]
                gpus = ",".join(pool[rank * per_replica:(rank + 1) * per_replica])
            inbox = ctx.Queue()
            proc = ctx.Process(target=_dp_worker, args=(rank, gpus, self.engine_factory, self.params_factory, kwargs,
                                                        self.config.max_attempts, inbox, self._outbox), daemon=True)
            proc.start()
            self._replicas.append((proc, inbox))

    def close(self) -> None:
        if self._engine is not None:
            self._engine = None
            import gc

            gc.collect()
        for proc, inbox in self._replicas:
            inbox.put(None)
        for proc, _ in self._replicas:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        self._replicas = []

    # -- requests --------------------------------------------------------------------------

    def _admit(self, key: str, num_prompt_tokens: int) -> bool:
        """Engine-side validation fails the whole call on one bad prompt: filter here."""
        if 0 < num_prompt_tokens < self.max_context:
            return True
        self.stats["skipped_overlength"] += 1
        if len(self.stats["skipped_keys"]) < 100:
            self.stats["skipped_keys"].append(key)
        logger.warning("skipping request %s: %d prompt tokens, the engine accepts 1..%d", key, num_prompt_tokens,
                       self.max_context - 1)
        return False

    def _check_k(self, k: int) -> None:
        if k > self.config.max_logprobs:
            raise ConfigError(f"--top-k {k} exceeds the recipe's vllm.max_logprobs {self.config.max_logprobs}; raise it")

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> Iterator[TeacherOutput]:
        k = params.top_k_logprobs
        self._check_k(k)
        items = []
        for r in requests:
            ids = [int(i) for i in r.prompt_ids]
            if not self._admit(r.key, len(ids)):
                continue
            kw = dict(
                max_tokens=min(params.max_new_tokens, self.max_context - len(ids)),
                temperature=params.temperature, top_p=params.top_p, seed=int(r.seed) % (2**63),
                logprobs=k if k else None, flat_logprobs=True, detokenize=bool(params.stop),
                skip_special_tokens=True,
            )
            if params.stop:
                # Stop strings need detokenized text; without them ids alone suffice.
                kw["stop"] = list(params.stop)
            if params.json_schema:
                # guided decoding: the answer is held to the schema (a JSON array of prompts)
                kw["structured_outputs"] = {"json": json.loads(params.json_schema)}
            items.append((r.key, ids, kw, None))
        return self._run(items, k, score=False)

    def score(self, requests: Sequence[ScoreRequest], top_k: int) -> Iterator[TeacherOutput]:
        self._check_k(top_k)
        items = []
        for r in requests:
            ids = [int(i) for i in r.prompt_ids] + [int(i) for i in r.response_ids]
            if not self._admit(r.key, len(ids)):
                continue
            kw = dict(max_tokens=1, temperature=0.0, prompt_logprobs=top_k, flat_logprobs=True, detokenize=False,
                      skip_reading_prefix_cache=True)  # cached prompt positions would get no prompt_logprobs
            items.append((r.key, ids, kw, [int(i) for i in r.response_ids]))
        return self._run(items, top_k, score=True)

    def _run(self, items: list, k: int, score: bool) -> Iterator[TeacherOutput]:
        self._ensure_engines()
        size = self.config.chunk_size
        chunks = (_Chunk(items[i:i + size], k, score) for i in range(0, len(items), size))
        if not self._replicas:
            for chunk in chunks:
                yield from run_chunk(self._engine, chunk, self.params_factory, self.tokenizer, self.config.max_attempts)
            return
        yield from self._run_replicas(chunks)

    def _run_replicas(self, chunks: Iterator[_Chunk]) -> Iterator[TeacherOutput]:
        # Two chunks queued per replica: one running, one ready, so no replica idles between calls.
        busy = {rank: 0 for rank in range(len(self._replicas))}
        index = 0
        exhausted = False

        def feed(rank: int) -> None:
            nonlocal index, exhausted
            while not exhausted and busy[rank] < 2:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    return
                self._replicas[rank][1].put((index, chunk))
                index += 1
                busy[rank] += 1

        for rank in busy:
            feed(rank)
        while any(busy.values()):
            rank, _, outputs = self._outbox.get()
            if isinstance(outputs, BaseException):
                self.close()
                raise outputs
            busy[rank] -= 1
            feed(rank)
            for out in outputs:
                if not out.text and self.tokenizer is not None:
                    out.text = self.tokenizer.decode(out.response_ids.tolist(), skip_special_tokens=True)
                yield out


__all__ = [
    "VLLMEngineConfig",
    "VLLMTeacher",
    "completion_to_output",
    "prompt_logprobs_to_output",
]
