"""KL(teacher ‖ model) per token on the teacher's responses, computed by the training loss's functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.eval.generation import Generation


@dataclass
class TeacherRef:
    """The teacher's greedy answers to the suite (for agreement) and its responses with top-k
    log-probs (for the KL). ``generations`` is None for a black-box teacher's KL."""

    name: str
    texts: list[str]
    tokenizer_fingerprint: str | None
    generations: list[Generation] | None


def kl_to_teacher(
    model: Any, ref: TeacherRef, *, batch_size: int, desc: str | None = None
) -> tuple[float, int]:
    """Forward KL(teacher ‖ model) per token over the teacher's responses: (kl_mean, num_tokens).

    The (k+1)-bin divergence is the training loss's own (``distill.losses.chunked_head_loss``,
    forward KL at temperature 1, the function ``distill train --eval-every`` reports as
    ``eval_kl``), so the KL that gates a promotion and the KL training watched are one number.
    The model's logits are computed only at response positions, in chunks.
    """
    import torch
    from tqdm import tqdm

    from distill.losses import chunked_head_loss

    assert ref.generations is not None
    device = next(model.parameters()).device
    rows = [g for g in ref.generations if g.response_ids and g.topk_ids is not None]
    rows.sort(key=lambda g: -(len(g.prompt_ids) + len(g.response_ids)))
    kl_sum, num_tokens = 0.0, 0
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for batch in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
        width = max(len(g.prompt_ids) + len(g.response_ids) for g in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        positions = []
        for row, g in enumerate(batch):
            ids = g.prompt_ids + g.response_ids
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
            # position P - 1 + j predicts response token j
            positions.append(row * width + len(g.prompt_ids) - 1 + torch.arange(len(g.response_ids)))
        targets = torch.from_numpy(np.concatenate([np.asarray(g.response_ids, dtype=np.int64) for g in batch]))
        topk_ids = torch.from_numpy(np.concatenate([g.topk_ids.astype(np.int64) for g in batch]))
        topk_logprobs = torch.from_numpy(np.concatenate([g.topk_logprobs.astype(np.float32) for g in batch]))
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, torch.cat(positions).to(device))
            sums = chunked_head_loss(flat, model.get_output_embeddings(), targets.to(device), topk_ids.to(device),
                                     topk_logprobs.to(device), kd_weight=0.0, divergence_name="forward_kl")
        kl_sum += float(sums.kd)
        num_tokens += int(targets.numel())
    if num_tokens == 0:
        return float("nan"), 0
    return kl_sum / num_tokens, num_tokens
