"""Every prompt the store's corpora already hold, as exact keys and MinHash signatures on disk.

Each finished run leaves one segment (``runs/RUN_ID/index/``) for the prompts its corpus answered:

    keys.npy     [n, 2] uint64   the first 16 bytes of sha256 over the normalized conversation
    minhash.npy  [n, P] uint32   MinHash signature of the word 3-gram shingles (P permutations)
    bands.npy    [B, n] uint64   one hash per LSH band of R rows (B * R <= P), band-major
    texts.bin, offsets.npy       the prompts' text (UTF-8, concatenated) and where each starts

A new run's prompts are checked against every segment in turn, so memory holds one band column of
one segment (8 bytes per old prompt) plus the new prompts' own arrays, whatever the history's
size; the old signatures are read (memory-mapped) only for the candidates a band proposes.

Exact duplicates: equal keys. Near duplicates: a shared band proposes the pair (the bands are
tuned for recall, as augmentation's), the signatures' agreement (the MinHash estimate of the
Jaccard similarity, standard error about 0.04 at 128 permutations) screens it, and the exact
Jaccard of the two shingle sets, the old text read from the segment, decides, at the same
threshold as augmentation's. The shingles are
augmentation's (``distill.dedup.shingles``); the hash permutations are fixed in this module, so
segments written by one version stay comparable with the next.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from distill.dedup import _lsh_params, jaccard, shingles
from distill.prompts import normalize_text

NUM_PERM = 128
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)
VERIFY_MARGIN = 0.15  # candidates whose MinHash estimate is this close below the threshold get the exact Jaccard
_CHUNK = 1 << 15  # shingles hashed per vectorized step ([chunk, P] uint64 = 32 MB at P = 128)


def conversation_text(messages: Sequence[dict[str, str]]) -> str:
    """The text a prompt is compared by: every turn's content, in order."""
    return "\n".join(str(m.get("content", "")) for m in messages)


def exact_keys(conversations: Iterable[Sequence[dict[str, str]]]) -> np.ndarray:
    """[n, 2] uint64: sha256 of the normalized (role, content) pairs, first 16 bytes."""
    out = []
    for messages in conversations:
        canon = json.dumps([[m["role"], normalize_text(m["content"])] for m in messages], ensure_ascii=False)
        out.append(struct.unpack("<QQ", hashlib.sha256(canon.encode("utf-8")).digest()[:16]))
    return np.asarray(out, dtype=np.uint64).reshape(-1, 2)


@dataclass(frozen=True)
class Hasher:
    threshold: float = 0.7
    num_perm: int = NUM_PERM

    @property
    def bands(self) -> tuple[int, int]:
        return _lsh_params(self.threshold, self.num_perm)

    def _permutations(self) -> tuple[np.ndarray, np.ndarray]:
        # Universal hashing h -> (a h + b) mod (2^61 - 1), truncated to 32 bits, with a and b drawn
        # from a fixed seed: fixed here, not taken from a library, so segments written by one
        # version of distill stay comparable with the next.
        gen = np.random.RandomState(1)
        a = gen.randint(1, int(_MERSENNE), size=self.num_perm, dtype=np.uint64)
        b = gen.randint(0, int(_MERSENNE), size=self.num_perm, dtype=np.uint64)
        return a, b

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """[n, P] uint32 MinHash signatures (an empty text: all 2^32 - 1, matching nothing)."""
        a, b = self._permutations()
        hashes: list[int] = []
        owners: list[int] = []
        for i, text in enumerate(texts):
            for sh in shingles(text):
                hashes.append(struct.unpack("<I", hashlib.sha1(sh.encode("utf-8")).digest()[:4])[0])
                owners.append(i)
        sig = np.full((len(texts), self.num_perm), _MAX_HASH, dtype=np.uint64)
        hv_all = np.asarray(hashes, dtype=np.uint64)
        own_all = np.asarray(owners, dtype=np.int64)
        for start in range(0, len(hv_all), _CHUNK):
            hv = hv_all[start:start + _CHUNK, None]
            own = own_all[start:start + _CHUNK]
            with np.errstate(over="ignore"):  # a * h < 2^61 * 2^32 wraps in uint64, as datasketch's legacy scheme
                phv = ((hv * a[None, :] + b[None, :]) % _MERSENNE) & _MAX_HASH
            # rows are grouped by owner (texts are walked in order): reduce each run of equal owners
            cuts = np.flatnonzero(np.diff(own)) + 1
            starts = np.concatenate([[0], cuts])
            mins = np.minimum.reduceat(phv, starts, axis=0)
            ids = own[starts]
            sig[ids] = np.minimum(sig[ids], mins)
        return sig.astype(np.uint32)

    def band_hashes(self, sig: np.ndarray) -> np.ndarray:
        """[B, n] uint64: one hash per band of R signature rows."""
        bands, rows = self.bands
        sig64 = sig.astype(np.uint64)
        out = np.empty((bands, sig.shape[0]), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(bands):
                h = np.full(sig.shape[0], np.uint64(0xCBF29CE484222325) ^ np.uint64(j), dtype=np.uint64)
                for col in sig64[:, j * rows:(j + 1) * rows].T:
                    h = (h ^ col) * np.uint64(0x100000001B3)
                out[j] = h
        return out


@dataclass
class Prompts:
    """What a segment holds of N prompts: keys [N, 2], signatures [N, P], bands [B, N], texts."""

    keys: np.ndarray
    sig: np.ndarray
    bands: np.ndarray
    texts: list[str]

    @classmethod
    def of(cls, conversations: Sequence[Sequence[dict[str, str]]], hasher: "Hasher") -> "Prompts":
        texts = [conversation_text(c) for c in conversations]
        sig = hasher.signatures(texts)
        return cls(exact_keys(conversations), sig, hasher.band_hashes(sig), texts)

    def take(self, rows: Sequence[int]) -> "Prompts":
        return Prompts(self.keys[rows], self.sig[rows], self.bands[:, rows], [self.texts[i] for i in rows])


def write_segment(folder: Path, prompts: Prompts, hasher: Hasher) -> None:
    """Write one segment; ``segment.json`` (counts, parameters) last."""
    from distill.atomic import atomic_write_bytes, atomic_write_text, atomic_write_with

    keys, sig, bands, texts = prompts.keys, prompts.sig, prompts.bands, prompts.texts
    folder.mkdir(parents=True, exist_ok=True)
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum([len(b) for b in encoded], dtype=np.uint64) if encoded else []
    for name, array in (("keys.npy", keys), ("minhash.npy", sig), ("bands.npy", bands), ("offsets.npy", offsets)):
        atomic_write_with(folder / name, lambda tmp, array=array: _save(tmp, array))
    atomic_write_bytes(folder / "texts.bin", b"".join(encoded))
    atomic_write_text(folder / "segment.json", json.dumps({
        "prompts": int(keys.shape[0]), "num_perm": hasher.num_perm, "threshold": hasher.threshold,
        "bands": list(hasher.bands)}) + "\n")


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "xb") as handle:  # a handle: np.save would append ".npy" to the temp name
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def _load(folder: Path, name: str) -> np.ndarray:
    return np.load(folder / name, mmap_mode="r", allow_pickle=False)


@dataclass
class Verdicts:
    """Per new prompt: why it was dropped ("" = kept) and what it matched."""

    reason: list[str]
    match: list[str]

    def kept(self) -> list[int]:
        return [i for i, r in enumerate(self.reason) if not r]


def dedup(prompts: Prompts, segments: Sequence[tuple[str, Path]], hasher: Hasher, near: bool = True) -> Verdicts:
    """Drop exact and near duplicates of ``segments`` (``(label, folder)`` of earlier runs) and of
    earlier prompts of the same list; the kept ones become this run's segment."""
    keys, sig, bands, texts = prompts.keys, prompts.sig, prompts.bands, prompts.texts
    n = len(texts)
    new_shingles: list[set[str] | None] = [None] * n
    reason = [""] * n
    match = [""] * n
    alive = np.ones(n, dtype=bool)
    for label, folder in segments:
        old_keys = _load(folder, "keys.npy")
        if old_keys.shape[0] == 0:
            continue
        # exact: the first 64 bits propose, the second 64 confirm
        hit = np.isin(keys[:, 0], old_keys[:, 0]) & alive
        if hit.any():
            seconds = {(int(x), int(y)) for x, y in old_keys[np.isin(old_keys[:, 0], keys[hit, 0])]}
            for i in np.flatnonzero(hit):
                if (int(keys[i, 0]), int(keys[i, 1])) in seconds:
                    reason[i], match[i], alive[i] = "duplicate_of_earlier_run", label, False
        if not near:
            continue
        meta = json.loads((folder / "segment.json").read_text())
        if meta["num_perm"] != hasher.num_perm or tuple(meta["bands"]) != hasher.bands:
            raise ValueError(f"{folder}: index segment built with other MinHash settings ({meta}); "
                             f"this run uses {hasher.num_perm} permutations and bands {hasher.bands}")
        old_sig = _load(folder, "minhash.npy")
        old_bands = _load(folder, "bands.npy")
        offsets = _load(folder, "offsets.npy")
        old_texts = np.memmap(folder / "texts.bin", dtype=np.uint8, mode="r") if int(offsets[-1]) else None
        best = np.zeros(n, dtype=np.float64)
        for j in range(old_bands.shape[0]):
            todo = np.flatnonzero(alive)
            if todo.size == 0:
                break
            column = np.asarray(old_bands[j])
            order = np.argsort(column, kind="stable")
            sorted_col = column[order]
            probe = bands[j, todo]
            left = np.searchsorted(sorted_col, probe, side="left")
            right = np.searchsorted(sorted_col, probe, side="right")
            for i, lo, hi in zip(todo, left, right):
                if hi == lo:
                    continue
                cand = np.sort(order[lo:min(hi, lo + 1024)])
                agree = (np.asarray(old_sig[cand]) == sig[i][None, :]).mean(axis=1)
                # the estimate proposes (within its noise of the threshold); the exact Jaccard of the
                # two shingle sets decides, the old text read from the segment
                for k in np.flatnonzero(agree >= hasher.threshold - VERIFY_MARGIN):
                    old = int(cand[k])
                    if new_shingles[i] is None:
                        new_shingles[i] = shingles(texts[i])
                    raw = bytes(old_texts[int(offsets[old]):int(offsets[old + 1])])
                    score = jaccard(new_shingles[i], shingles(raw.decode("utf-8")))
                    if score >= hasher.threshold and score > best[i]:
                        best[i] = score
                        reason[i], match[i], alive[i] = "near_duplicate_of_earlier_run", f"{label} ({score:.2f})", False
                        break
    if near:  # within this run: keep the first of each group, in order
        buckets: list[dict[int, list[int]]] = [dict() for _ in range(bands.shape[0])]
        for i in range(n):
            if not alive[i]:
                continue
            seen: set[int] = set()
            dup = None
            for j in range(bands.shape[0]):
                for k in buckets[j].get(int(bands[j, i]), ()):
                    if k in seen:
                        continue
                    seen.add(k)
                    if float((sig[k] == sig[i]).mean()) < hasher.threshold - VERIFY_MARGIN:
                        continue
                    for m in (i, k):
                        if new_shingles[m] is None:
                            new_shingles[m] = shingles(texts[m])
                    score = jaccard(new_shingles[i], new_shingles[k])
                    if score >= hasher.threshold:
                        dup = (k, score)
                        break
                if dup:
                    break
            if dup:
                reason[i], match[i], alive[i] = "near_duplicate", f"prompt {dup[0]} of this run ({dup[1]:.2f})", False
                continue
            for j in range(bands.shape[0]):
                buckets[j].setdefault(int(bands[j, i]), []).append(i)
    return Verdicts(reason, match)
