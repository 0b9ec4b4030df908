"""Batches for `distill train`: length-grouped, token-budgeted, split per rank, resumable, streamed.

A training epoch is *planned* from the corpus' lengths alone (``Corpus.lengths()`` reads two
integer columns): row groups are shuffled with the seed, taken a window at a time, and inside a
window rows are sorted by length and cut into micro-batches under a padded-token budget. The plan
is a pure function of (lengths, seed, epoch), so a resumed run rebuilds it exactly and skips to
its data position (epoch, step) without reading any rows. Rows are then read row group by row
group through a small cache, so memory stays bounded by a few row groups whatever the corpus size.

A micro-batch holds whole rows, right-padded. Only response positions reach the LM head: the
input is ``prompt + response[:-1]`` and position ``P - 1 + j`` predicts response token ``j``.

Packing (``BatchSpec.packing``): inside a window, rows are packed first-fit-decreasing into
sequences of at most ``max_seq_len`` tokens, and a micro-batch takes ``pack_rows`` such sequences
(``tokens_per_batch // max_seq_len``, or ``batch_size``). ``position_ids`` restart at 0 at every
row and there is no attention mask: transformers then builds a block-diagonal causal mask
(sdpa/eager/flex) or variable-length flash-attention calls, so rows never attend to each other.
The short tail that evens out a micro-batch's sequences is its own position run, never read by
the loss. Flat ``positions`` index the micro-batch the same way in both layouts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

WINDOW_GROUPS = 4  # row groups per length-grouping window (the row cache holds twice that)


@dataclass(frozen=True)
class BatchSpec:
    """How rows become micro-batches and optimizer steps."""

    max_seq_len: int
    tokens_per_batch: int | None  # padded tokens per micro-batch; or
    batch_size: int | None  # rows per micro-batch
    grad_accum: int
    world_size: int
    seed: int
    packing: bool = False  # several rows per sequence, position_ids restarting per row

    @property
    def micro_per_step(self) -> int:
        return self.grad_accum * self.world_size

    @property
    def pack_rows(self) -> int:
        """Packed sequences (of <= max_seq_len tokens) per micro-batch."""
        return self.batch_size if self.batch_size is not None else max(1, self.tokens_per_batch // self.max_seq_len)


def effective_lengths(lengths: np.ndarray, max_seq_len: int) -> np.ndarray:
    """Input length of each row (prompt + response - 1, capped); 0 for rows that cannot train
    (empty response, or the prompt alone already fills max_seq_len)."""
    inputs = np.minimum(lengths - 1, max_seq_len)
    return np.where(lengths >= 2, inputs, 0)


def holdout_rows(row_group_offsets: list[int], num_rows: int, num_eval: int, seed: int) -> np.ndarray:
    """Global indices of held-out rows: a seeded random sample across the whole corpus, so the
    held-out set covers every part of it (a corpus is written in prompt order, and whole row
    groups would hold out one topic). Reading them touches at most ``num_eval`` row groups, once."""
    if num_eval <= 0 or num_eval >= num_rows:  # never hold out everything
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 7919])
    return np.sort(rng.choice(num_rows, size=num_eval, replace=False)).astype(np.int64)


def first_fit_decreasing(sizes: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Indices into ``sizes`` grouped into bins whose sizes sum to <= capacity (every size must
    fit). Longest first, each into the first bin with room: bins come out nearly full."""
    order = np.argsort(-sizes, kind="stable")
    free = np.zeros(len(sizes), dtype=np.int64)
    members: list[list[int]] = []
    for i in order:
        size = int(sizes[i])
        fits = free[:len(members)] >= size
        b = int(np.argmax(fits)) if len(members) and fits.any() else len(members)
        if b == len(members):
            members.append([])
            free[b] = capacity
        members[b].append(int(i))
        free[b] -= size
    return [np.asarray(m, dtype=np.int64) for m in members]


def plan_epoch(
    lengths: np.ndarray, row_group_offsets: list[int], spec: BatchSpec, epoch: int, exclude: np.ndarray | None = None
) -> list:
    """Micro-batches for one epoch, cut to whole optimizer steps.

    Padded: each micro-batch is an array of global row indices. Windows of WINDOW_GROUPS shuffled
    row groups; inside a window, rows shuffled then sorted by length (length grouping), cut under
    the token budget, and the window's batches shuffled. Packed: each micro-batch is a tuple of
    ``pack_rows`` sequences (arrays of global row indices), from the same shuffled windows.
    """
    num_rows = len(lengths)
    eff = effective_lengths(lengths, spec.max_seq_len)
    usable = eff > 0
    if exclude is not None and len(exclude):
        usable[exclude] = False
    rng = np.random.default_rng([spec.seed, epoch])
    bounds = [*row_group_offsets, num_rows]
    group_order = rng.permutation(len(row_group_offsets))
    batches: list[np.ndarray] = []
    for w in range(0, len(group_order), WINDOW_GROUPS):
        rows = np.concatenate([np.arange(bounds[g], bounds[g + 1]) for g in group_order[w:w + WINDOW_GROUPS]])
        rows = rows[usable[rows]]
        rows = rows[rng.permutation(len(rows))]
        if spec.packing:
            sequences = [rows[b] for b in first_fit_decreasing(eff[rows], spec.max_seq_len)]
            # sequences of similar fill share a micro-batch: its width is the fullest one's
            sequences.sort(key=lambda seq: int(eff[seq].sum()))
            k = spec.pack_rows
            window_packed = [tuple(sequences[i:i + k]) for i in range(0, len(sequences), k)]
            batches.extend(window_packed[i] for i in rng.permutation(len(window_packed)))
            continue
        rows = rows[np.argsort(eff[rows], kind="stable")]
        window: list[np.ndarray] = []
        start = 0
        while start < len(rows):
            if spec.batch_size is not None:
                end = min(start + spec.batch_size, len(rows))
            else:
                end = start + 1
                # rows are sorted ascending, so the newest row sets the padded width
                while end < len(rows) and (end - start + 1) * eff[rows[end]] <= spec.tokens_per_batch:
                    end += 1
            window.append(rows[start:end])
            start = end
        batches.extend(window[i] for i in rng.permutation(len(window)))
    usable_count = len(batches) - len(batches) % spec.micro_per_step
    return batches[:usable_count]


def steps_in(plan: list, spec: BatchSpec) -> int:
    return len(plan) // spec.micro_per_step


def rank_micro_batches(plan: list, spec: BatchSpec, step: int, rank: int) -> list:
    """This rank's ``grad_accum`` micro-batches of optimizer step ``step`` (0-based, in the epoch)."""
    base = step * spec.micro_per_step + rank * spec.grad_accum
    return plan[base:base + spec.grad_accum]


@dataclass
class VocabStats:
    """Counts for the vocabulary checks: stored ids outside the student vocabulary."""

    vocab_size: int
    oov_topk_entries: int = 0  # top-k entries moved to the tail bucket
    dropped_rows: int = 0  # rows whose prompt/response ids cannot be embedded
    long_prompts: int = 0  # rows whose prompt alone exceeds max_seq_len
    warned: set[str] = field(default_factory=set)


class RowReader:
    """Rows by global index, decoded row group by row group through a small LRU cache."""

    def __init__(self, corpus: Any, cache_groups: int = 2 * WINDOW_GROUPS) -> None:
        self.corpus = corpus
        self.offsets = np.asarray([*corpus.row_group_offsets, corpus.num_rows], dtype=np.int64)
        self.cache: OrderedDict[int, list] = OrderedDict()
        self.cache_groups = cache_groups

    def row(self, index: int):
        group = int(np.searchsorted(self.offsets, index, side="right") - 1)
        rows = self.cache.get(group)
        if rows is None:
            rows = self.corpus.read_row_group(group)
            self.cache[group] = rows
            while len(self.cache) > self.cache_groups:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(group)
        return rows[index - int(self.offsets[group])]


def _trainable(rows: list, max_seq_len: int, stats: VocabStats, log) -> list:
    """Drop (and count) rows that cannot train: ids outside the student vocabulary, or a prompt
    longer than max_seq_len."""
    kept = []
    for row in rows:
        ids = np.concatenate([row.prompt_ids, row.response_ids])
        if len(ids) and (ids.max() >= stats.vocab_size or ids.min() < 0):
            stats.dropped_rows += 1
            if "row" not in stats.warned:
                stats.warned.add("row")
                log(f"warning: row {row.id} holds token ids outside the student vocabulary "
                    f"({stats.vocab_size}); such rows are skipped and counted")
            continue
        if len(row.prompt_ids) > max_seq_len:
            stats.long_prompts += 1
            continue
        kept.append(row)
    return kept


def _span(row, max_seq_len: int) -> tuple[int, int]:
    """(prompt length, response tokens trained): the input is prompt + response[:t-1]."""
    p = len(row.prompt_ids)
    return p, min(len(row.response_ids), max_seq_len - p + 1)


def _targets_and_teacher(kept: list, spans: list, positions: list, top_k: int, stats: VocabStats, log) -> dict[str, Any]:
    import torch

    targets = [row.response_ids[:t] for row, (_, t) in zip(kept, spans)]
    batch: dict[str, Any] = {
        "positions": torch.from_numpy(np.concatenate(positions).astype(np.int64) if positions else np.zeros(0, np.int64)),
        "targets": torch.from_numpy(np.concatenate(targets).astype(np.int64) if targets else np.zeros(0, np.int64)),
        "topk_ids": None,
        "topk_logprobs": None,
    }
    if top_k:
        tk_ids = [row.topk_ids[:t] for row, (_, t) in zip(kept, spans)]
        tk_lps = [row.topk_logprobs[:t] for row, (_, t) in zip(kept, spans)]
        ids = np.concatenate(tk_ids).astype(np.int64) if tk_ids else np.zeros((0, top_k), np.int64)
        oov = int((ids >= stats.vocab_size).sum())
        if oov:
            stats.oov_topk_entries += oov
            if "topk" not in stats.warned:
                stats.warned.add("topk")
                log(f"warning: the corpus stores teacher top-k ids >= the student vocabulary ({stats.vocab_size}); "
                    "their probability mass is moved to the tail bucket (count reported at the end)")
        batch["topk_ids"] = torch.from_numpy(ids)
        batch["topk_logprobs"] = torch.from_numpy(
            np.concatenate(tk_lps).astype(np.float32) if tk_lps else np.zeros((0, top_k), np.float32))
    batch["num_tokens"] = int(batch["targets"].numel())
    return batch


def _prompt_targets(kept: list, starts: list) -> dict[str, Any]:
    """Flat positions and targets of the prompt tokens after the first (``--prompt-loss-weight``):
    the input at position j of a row predicts prompt token j + 1; ``starts`` are the rows' flat
    offsets of their first input token."""
    import torch

    positions = [start + np.arange(len(row.prompt_ids) - 1) for row, start in zip(kept, starts)]
    targets = [np.asarray(row.prompt_ids[1:]) for row in kept]
    return {
        "prompt_positions": torch.from_numpy(np.concatenate(positions).astype(np.int64) if positions else np.zeros(0, np.int64)),
        "prompt_targets": torch.from_numpy(np.concatenate(targets).astype(np.int64) if targets else np.zeros(0, np.int64)),
    }


def collate(rows: list, *, max_seq_len: int, pad_id: int, top_k: int, stats: VocabStats, log=print,
            prompt_loss: bool = False) -> dict[str, Any]:
    """CorpusRows -> tensors for one padded micro-batch.

    Returns input_ids/attention_mask [B, L]; position_ids None (the model counts from 0);
    positions [N] (flat indices into B*L of the response positions); targets [N]; topk_ids [N, k]
    int64 and topk_logprobs [N, k] float32 (None for a black-box corpus); num_tokens N;
    num_input_tokens (non-pad inputs). Teacher ids >= the student vocabulary are kept and become
    absent bins in the loss (their mass joins the tail); they are counted here. With
    ``prompt_loss`` also prompt_positions/prompt_targets [P] (see ``_prompt_targets``).
    """
    import torch

    kept = _trainable(rows, max_seq_len, stats, log)
    spans = [_span(row, max_seq_len) for row in kept]
    width = max([p + t - 1 for p, t in spans], default=0)
    input_ids = np.full((len(kept), max(width, 1)), pad_id, dtype=np.int64)
    attention = np.zeros_like(input_ids)
    positions = []
    for b, (row, (p, t)) in enumerate(zip(kept, spans)):
        seq = np.concatenate([row.prompt_ids, row.response_ids[: t - 1]])
        input_ids[b, : len(seq)] = seq
        attention[b, : len(seq)] = 1
        positions.append(b * input_ids.shape[1] + np.arange(p - 1, p - 1 + t))
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
             "position_ids": None, **_targets_and_teacher(kept, spans, positions, top_k, stats, log)}
    batch["num_input_tokens"] = int(attention.sum())
    if prompt_loss:
        batch.update(_prompt_targets(kept, [b * input_ids.shape[1] for b in range(len(kept))]))
    return batch


def collate_packed(sequences: list[list], *, max_seq_len: int, pad_id: int, top_k: int, stats: VocabStats,
                   log=print, prompt_loss: bool = False) -> dict[str, Any]:
    """Packed sequences (each a list of CorpusRows whose inputs fit max_seq_len) -> tensors.

    Returns input_ids/position_ids [S, L] with position_ids restarting at 0 at every row;
    attention_mask None (so transformers keeps the rows apart); the short pad tail that evens the
    sequences out is one more position run starting at 0. The other keys are as in ``collate``,
    the rows' targets in sequence order.
    """
    import torch

    layout = []
    for sequence in sequences:
        kept = _trainable(sequence, max_seq_len, stats, log)
        layout.append((kept, [_span(row, max_seq_len) for row in kept]))
    width = max([sum(p + t - 1 for p, t in spans) for _, spans in layout], default=0)
    input_ids = np.full((len(layout), max(width, 1)), pad_id, dtype=np.int64)
    position_ids = np.zeros_like(input_ids)
    all_kept, all_spans, positions, row_starts = [], [], [], []
    for s, (kept, spans) in enumerate(layout):
        start = 0
        for row, (p, t) in zip(kept, spans):
            n = p + t - 1
            input_ids[s, start:start + n] = np.concatenate([row.prompt_ids, row.response_ids[: t - 1]])
            position_ids[s, start:start + n] = np.arange(n)
            positions.append(s * input_ids.shape[1] + start + np.arange(p - 1, p - 1 + t))
            row_starts.append(s * input_ids.shape[1] + start)
            start += n
        assert start <= max_seq_len, (start, max_seq_len)
        position_ids[s, start:] = np.arange(input_ids.shape[1] - start)
        all_kept.extend(kept)
        all_spans.extend(spans)
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": None,
             "position_ids": torch.from_numpy(position_ids),
             **_targets_and_teacher(all_kept, all_spans, positions, top_k, stats, log)}
    batch["num_input_tokens"] = sum(p + t - 1 for p, t in all_spans)
    if prompt_loss:
        batch.update(_prompt_targets(all_kept, row_starts))
    return batch


def iter_steps(
    corpus: Any, lengths: np.ndarray, spec: BatchSpec, *, rank: int, start_epoch: int, start_step: int,
    num_epochs: int | None, exclude: np.ndarray | None, collate_kwargs: dict[str, Any],
) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """Yield (epoch, step_in_epoch, this rank's micro-batches) from the data position onward.

    ``num_epochs=None`` cycles forever (the caller stops at --max-steps).
    """
    reader = RowReader(corpus)
    epoch = start_epoch
    step = start_step
    while num_epochs is None or epoch < num_epochs:
        plan = plan_epoch(lengths, corpus.row_group_offsets, spec, epoch, exclude)
        total = steps_in(plan, spec)
        if total == 0:
            return
        while step < total:
            if spec.packing:
                micro = [collate_packed([[reader.row(int(i)) for i in seq] for seq in batch], **collate_kwargs)
                         for batch in rank_micro_batches(plan, spec, step, rank)]
            else:
                micro = [collate([reader.row(int(i)) for i in batch], **collate_kwargs)
                         for batch in rank_micro_batches(plan, spec, step, rank)]
            yield epoch, step, micro
            step += 1
        epoch += 1
        step = 0
