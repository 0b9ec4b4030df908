"""Exact and near-duplicate detection for prompts, and the diversity figures reported about them.

Exact duplicates: equal ``normalize_text`` (NFKC, collapsed whitespace, casefold), compared by
sha256. Near duplicates: MinHash-LSH from ``datasketch`` proposes candidate pairs and the exact
Jaccard similarity of the two shingle sets decides. datasketch is maintained, pure Python + numpy
(no native build, no server), supports incremental insert/query/remove (we index as we accept)
and scales to millions of prompts; verifying its candidates exactly removes its false positives,
so we tune its bands for recall (see ``NearDuplicateIndex``).

Shingles (defaults, see docs/augmentation.md): word 3-grams over lower-cased word tokens, Jaccard
>= 0.7. Word shingles of 3 catch paraphrase-level copies of real LLM prompts (a word or two
changed in a 20-40 word prompt) while prompts that share a template but differ in several
numbers or names stay distinct: each changed token removes up to 3 shared shingles, so two
changed slots in a 20-word prompt already fall near Jaccard 0.5. Character shingles
(``kind="char"``) are stricter about such prompts: they treat a changed number as a small edit.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from typing import Iterable, Sequence

from distill.prompts import normalize_text

SHINGLE_KINDS = ("word", "char")
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped) of the normalized text."""
    return _WORD.findall(normalize_text(text))


def exact_key(text: str) -> str:
    """Key for exact dedup: sha256 of the normalized text."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def shingles(text: str, kind: str = "word", size: int = 3, toks: list[str] | None = None) -> set[str]:
    """The shingle set of ``text`` (``toks``: its ``words`` if already computed). A text shorter
    than ``size`` is one shingle (itself)."""
    assert kind in SHINGLE_KINDS, kind
    toks = words(text) if toks is None else toks
    if kind == "word":
        if len(toks) <= size:
            return {" ".join(toks)} if toks else set()
        return {" ".join(toks[i : i + size]) for i in range(len(toks) - size + 1)}
    flat = " ".join(toks)
    if len(flat) <= size:
        return {flat} if flat else set()
    return {flat[i : i + size] for i in range(len(flat) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@functools.lru_cache(maxsize=None)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) datasketch picks for recall-weighted (0.01, 0.99) errors; cached because
    datasketch finds them by numerical integration (~0.1 s) on every index it builds."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.01, 0.99))
    return lsh.b, lsh.r


class NearDuplicateIndex:
    """An incremental near-duplicate index: ``query`` the best match >= threshold, then ``add``.

    Keys are caller ids (seed ids, synthetic ids). Memory: the shingle sets of indexed texts plus
    ``num_perm`` hash values each, a few KB per prompt.
    """

    def __init__(self, threshold: float = 0.7, *, kind: str = "word", size: int = 3, num_perm: int = 128, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        assert 0 < threshold <= 1 and kind in SHINGLE_KINDS and size >= 1
        self.threshold = threshold
        self.kind = kind
        self.size = size
        self.num_perm = num_perm
        # Candidates are verified with the exact Jaccard below, so false positives cost only a set
        # intersection each: pick bands for recall (~99% of pairs at the threshold are proposed,
        # against ~44% with datasketch's balanced default; at 128 perms and 0.7 that is 25 bands of 5).
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=_lsh_params(threshold, num_perm))
        # One set of permutations shared by every signature (building them per MinHash costs 4x).
        self._proto = MinHash(num_perm=num_perm, seed=seed)
        self._shingles: dict[str, set[str]] = {}
        self._last: tuple[str, set[str], object] | None = None  # (text, shingles, signature) of the last query

    def __len__(self) -> int:
        return len(self._shingles)

    def __contains__(self, key: str) -> bool:
        return key in self._shingles

    def _signature(self, shingle_set: set[str]):
        from datasketch import MinHash

        sig = MinHash(num_perm=self.num_perm, permutations=self._proto.permutations, scheme=self._proto.scheme)
        sig.update_batch([s.encode("utf-8") for s in sorted(shingle_set)])
        return sig

    def _shingles_and_signature(self, text: str, toks: list[str] | None = None):
        # add() right after query() of the same text (the usual accept path) reuses its signature.
        if self._last is not None and self._last[0] == text:
            return self._last[1], self._last[2]
        sh = shingles(text, self.kind, self.size, toks)
        sig = self._signature(sh) if sh else None
        self._last = (text, sh, sig)
        return sh, sig

    def query(self, text: str, toks: list[str] | None = None) -> tuple[str, float] | None:
        """(key, Jaccard) of the most similar indexed text with Jaccard >= threshold, else None.
        ``toks``: ``words(text)`` if the caller has them."""
        if not self._shingles:
            return None
        sh, sig = self._shingles_and_signature(text, toks)
        if not sh:
            return None
        best: tuple[str, float] | None = None
        for key in self._lsh.query(sig):
            sim = jaccard(sh, self._shingles[key])
            if sim >= self.threshold and (best is None or sim > best[1] or (sim == best[1] and key < best[0])):
                best = (key, sim)
        return best

    def add(self, key: str, text: str) -> None:
        if key in self._shingles:
            return
        sh, sig = self._shingles_and_signature(text)
        if not sh:
            return
        self._shingles[key] = sh
        self._lsh.insert(key, sig)

    def remove(self, key: str) -> None:
        if key in self._shingles:
            del self._shingles[key]
            self._lsh.remove(key)


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.7, *, kind: str = "word", size: int = 3) -> int:
    """Number of pairs with exact Jaccard >= threshold, by brute force over all pairs (no LSH).

    O(n^2): a check for a few thousand prompts (2,000 prompts ~ 2M pairs, seconds), used by
    tests and benchmarks as the independent measurement of what the LSH index lets through.
    """
    sets = [shingles(t, kind, size) for t in texts]
    # Pairs sharing no shingle have Jaccard 0: only compare texts that share at least one.
    by_shingle: dict[str, list[int]] = {}
    for i, sh in enumerate(sets):
        for s in sh:
            by_shingle.setdefault(s, []).append(i)
    count = 0
    for i, sh in enumerate(sets):
        partners = {j for s in sh for j in by_shingle[s] if j > i}
        count += sum(1 for j in partners if jaccard(sh, sets[j]) >= threshold)
    return count


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over the texts (0 when there are none)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        toks = words(text)
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def length_histogram(lengths: Sequence[int], num_bins: int = 10) -> dict[str, list[int]]:
    """Histogram of integer lengths: ``edges`` (num_bins + 1 integer bin edges) and ``counts``."""
    if not lengths:
        return {"edges": [], "counts": []}
    lo, hi = min(lengths), max(lengths)
    width = max(1, -(-(hi - lo + 1) // num_bins))
    edges = [lo + i * width for i in range(num_bins + 1)]
    counts = Counter(min((x - lo) // width, num_bins - 1) for x in lengths)
    return {"edges": edges, "counts": [counts.get(i, 0) for i in range(num_bins)]}


def diversity(texts: Sequence[str]) -> dict:
    """Diversity figures reported by augmentation and ``distill inspect``."""
    lengths = [len(words(t)) for t in texts]
    return {
        "distinct_1": round(distinct_n(texts, 1), 4),
        "distinct_2": round(distinct_n(texts, 2), 4),
        "distinct_3": round(distinct_n(texts, 3), 4),
        "length_words_histogram": length_histogram(lengths),
        "mean_length_words": round(sum(lengths) / len(lengths), 2) if lengths else 0.0,
    }
