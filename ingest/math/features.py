"""Binary features of a token (its text) and of an absolute position (pure math: no DB, no files).

A feature is a boolean column over vocabulary ids (``token_features``: single tokens, words in
every spelling, token classes, letters, topic word sets) or over positions (``position_features``).
Which neurons a feature explains is measured by variance reduction
(:mod:`atlas.ingest.math.variance_reduction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from atlas.ingest.math.lexicon import CLOSED_CLASSES, PREFIXES, PUNCTUATION, SUFFIXES, TOPIC_WORDS


@dataclass(frozen=True)
class FeatureSet:
    """Binary features over rows (vocabulary ids or positions).

    ``matrix: [n_rows, n_features] bool``; ``names[j]`` e.g. ``"token=' the'"``, ``"starts_with=a"``,
    ``"position in [32,64)"``; ``kinds[j]`` one of unigram | class | alphabet | topic | position.
    """

    names: list[str]
    kinds: list[str]
    matrix: torch.Tensor

    def __post_init__(self) -> None:
        if not (self.matrix.ndim == 2 and self.matrix.shape[1] == len(self.names) == len(self.kinds)):
            raise ValueError("FeatureSet: matrix columns, names and kinds must agree")

    @property
    def n_features(self) -> int:
        return len(self.names)


def normalise(text: str) -> str:
    """The word a token spells: stripped of surrounding whitespace, lower-cased."""
    return text.strip().lower()


def _class_predicates() -> list[tuple[str, str, callable]]:
    preds: list[tuple[str, str, callable]] = [
        ("leading_space", "class", lambda t, s: t[:1] == " " and s != ""),
        ("no_leading_space", "class", lambda t, s: t[:1] not in ("", " ", "\n", "\t") and s != ""),
        ("capitalised", "class", lambda t, s: s[:1].isupper()),
        ("all_caps", "class", lambda t, s: s.isupper() and sum(c.isalpha() for c in s) >= 2),
        ("lowercase_word", "class", lambda t, s: s.isalpha() and s.islower()),
        ("alphabetic", "class", lambda t, s: s.isalpha()),
        ("has_digit", "class", lambda t, s: any(c.isdigit() for c in s)),
        ("all_digits", "class", lambda t, s: s.isdigit()),
        ("year", "class", lambda t, s: len(s) == 4 and s.isdecimal() and 1490 <= int(s) <= 2200),
        ("single_letter", "class", lambda t, s: len(s) == 1 and s.isalpha()),
        ("whitespace", "class", lambda t, s: t != "" and s == ""),
        ("newline", "class", lambda t, s: "\n" in t),
        ("punctuation_only", "class", lambda t, s: s != "" and all(not c.isalnum() for c in s)),
    ]
    for n in range(1, 5):
        preds.append((f"digits={n}", "class", lambda t, s, n=n: s.isdecimal() and len(s) == n))
    for name, chars in PUNCTUATION.items():
        preds.append((f"punct={name}", "class", lambda t, s, chars=chars: any(c in chars for c in t)))
    for cls, words in CLOSED_CLASSES.items():
        ws = frozenset(words.split())
        preds.append((f"word_class={cls}", "class", lambda t, s, ws=ws: s.lower() in ws))
    for p in PREFIXES:
        preds.append((f"prefix={p}", "class",
                      lambda t, s, p=p: s.isalpha() and len(s) > len(p) + 2 and s.lower().startswith(p)))
    for x in SUFFIXES:
        preds.append((f"suffix={x}", "class",
                      lambda t, s, x=x: s.isalpha() and len(s) >= len(x) and s.lower().endswith(x)))
    for letter in "abcdefghijklmnopqrstuvwxyz":
        preds.append((f"starts_with={letter}", "alphabet", lambda t, s, c=letter: s[:1].lower() == c))
        preds.append((f"letter={letter}", "alphabet", lambda t, s, c=letter: s.lower() == c))
    for topic, words in TOPIC_WORDS.items():
        preds.append((f"topic={topic}", "topic", lambda t, s, ws=words: s.lower() in ws))
    return preds


def token_features(
    vocab: Sequence[str],
    frequent_token_ids: Iterable[int] = (),
    *,
    word_groups: bool = True,
    drop_empty: bool = True,
    special_token_ids: Iterable[int] = (),
) -> FeatureSet:
    """Binary features of vocabulary tokens: ``matrix: [d_vocab, n_features] bool``.

    - ``unigram``: ``token=<repr of text>`` (``token=' the'``) for each id in ``frequent_token_ids``; with ``word_groups``
      also ``word=<w>`` for a normalised word (stripped, lower-cased) that at least two vocabulary
      tokens spell (' the', 'the', ' The') and one of them is frequent.
    - ``class``: leading space, capitalised, all caps, digits, year (1490–2200), punctuation kinds,
      closed word classes, common prefixes and suffixes, ...
    - ``alphabet``: ``starts_with=x`` and ``letter=x`` for x in a–z.
    - ``topic``: ``topic=<name>`` for the built-in topic word sets (:data:`TOPIC_WORDS`).

    Special tokens (``special_token_ids``, and any text like ``<|endoftext|>``) belong to no
    class, alphabet or topic feature. Features no vocabulary token has are dropped (``drop_empty``).
    """
    vocab = [t if t is not None else "" for t in vocab]
    special = {int(i) for i in special_token_ids} | {
        i for i, t in enumerate(vocab) if len(t) > 4 and t.startswith("<|") and t.endswith("|>")}
    d_vocab = len(vocab)
    names: list[str] = []
    kinds: list[str] = []
    columns: list[np.ndarray] = []

    frequent = sorted({int(i) for i in frequent_token_ids})
    for i in frequent:
        if not 0 <= i < d_vocab:
            raise ValueError(f"frequent token id {i} outside the vocabulary (size {d_vocab})")
        col = np.zeros(d_vocab, dtype=bool)
        col[i] = True
        names.append(f"token={vocab[i]!r}")
        kinds.append("unigram")
        columns.append(col)

    normalised = [normalise(t) for t in vocab]
    if word_groups and frequent:
        groups: dict[str, list[int]] = {}
        for i, w in enumerate(normalised):
            if w and any(c.isalnum() for c in w):
                groups.setdefault(w, []).append(i)
        frequent_words = {normalised[i] for i in frequent}
        for w in sorted(frequent_words):
            ids = groups.get(w, [])
            if len(ids) >= 2:
                col = np.zeros(d_vocab, dtype=bool)
                col[ids] = True
                names.append(f"word={w}")
                kinds.append("unigram")
                columns.append(col)

    stripped = [t.strip() for t in vocab]
    plain = [(t, s) if i not in special else ("", "") for i, (t, s) in enumerate(zip(vocab, stripped))]
    for name, kind, pred in _class_predicates():
        col = np.fromiter((bool(pred(t, s)) for t, s in plain), dtype=bool, count=d_vocab)
        if drop_empty and not col.any():
            continue
        names.append(name)
        kinds.append(kind)
        columns.append(col)

    matrix = torch.from_numpy(np.stack(columns, axis=1)) if columns else torch.zeros(d_vocab, 0, dtype=torch.bool)
    return FeatureSet(names=names, kinds=kinds, matrix=matrix)


def position_features(n_ctx: int, *, n_exact: int = 8, n_buckets: int = 16) -> FeatureSet:
    """Absolute-position features: ``matrix: [n_ctx, n_features] bool``.

    ``position=p`` for the first ``n_exact`` positions, ``position in [lo,hi)`` for
    ``n_buckets`` equal-width buckets, and ``position>=k`` at each inner bucket edge (a ramp
    in position is best explained by a threshold)."""
    names: list[str] = []
    cols: list[np.ndarray] = []
    pos = np.arange(n_ctx)
    for p in range(min(n_exact, n_ctx)):
        names.append(f"position={p}")
        cols.append(pos == p)
    edges = bucket_edges(n_ctx, n_buckets)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi - lo > 1 or lo >= n_exact:
            names.append(f"position in [{lo},{hi})" if hi - lo > 1 else f"position={lo}")
            cols.append((pos >= lo) & (pos < hi))
    for k in edges[1:-1]:
        names.append(f"position>={k}")
        cols.append(pos >= k)
    # equal columns add nothing (tiny contexts make exact positions and buckets coincide)
    seen: set[bytes] = set()
    keep_names, keep_cols = [], []
    for n, c in zip(names, cols):
        key = np.packbits(c).tobytes()
        if key in seen or not c.any() or c.all():
            continue
        seen.add(key)
        keep_names.append(n)
        keep_cols.append(c)
    matrix = torch.from_numpy(np.stack(keep_cols, axis=1)) if keep_cols else torch.zeros(n_ctx, 0, dtype=torch.bool)
    return FeatureSet(names=keep_names, kinds=["position"] * len(keep_names), matrix=matrix)


def bucket_edges(n_ctx: int, n_buckets: int) -> list[int]:
    """Integer edges 0 = e_0 < e_1 < ... < e_k = n_ctx of at most ``n_buckets`` equal-width buckets."""
    n_buckets = max(1, min(n_buckets, n_ctx))
    edges = sorted({int(round(i * n_ctx / n_buckets)) for i in range(n_buckets + 1)})
    return edges


def frequent_token_ids(counts: torch.Tensor, *, min_count: int = 1, max_tokens: int = 2000,
                       exclude: Iterable[int] = ()) -> list[int]:
    """The (at most ``max_tokens``) most frequent token ids with ``counts[v] >= min_count``.
    ``counts: [d_vocab]`` (e.g. :attr:`FeatureAccumulator.token_count` without its last row)."""
    c = counts.detach().to("cpu", torch.float64).clone()
    for e in exclude:
        if 0 <= e < len(c):
            c[e] = -1
    order = torch.argsort(c, descending=True, stable=True)[:max_tokens]
    return sorted(int(i) for i in order if c[i] >= max(min_count, 1))
