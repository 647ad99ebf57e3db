"""Part-of-speech and dependency tags of every dataset token from an English spaCy pipeline (the
paper's syntax features), for the optional ``syntax`` extra (``pip install 'neuron-atlas[syntax]'``).

The token rows are decoded token by token, each row is parsed as one text, and every model token
gets the tags of the spaCy token its first non-space character falls in (special tokens and pure
whitespace get ``NONE``). Tags are per position, so they enter variance reduction like the
previous token does (:class:`atlas.ingest.math.activation_sums.FeatureAccumulator` ``tags``).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

# spaCy's universal part-of-speech tags (``Token.pos_``) and NONE for tokens without one
POS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
            "SCONJ", "SYM", "VERB", "X", "SPACE", "NONE")
PREFERRED_PIPELINES = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")


def english_pipelines() -> list[str]:
    """Installed spaCy pipeline packages for English, the official names first."""
    if importlib.util.find_spec("spacy") is None:
        return []
    import spacy

    installed = list(spacy.util.get_installed_models())
    english = [name for name in installed if name.startswith("en_core_web")]
    return sorted(english, key=lambda n: (PREFERRED_PIPELINES.index(n) if n in PREFERRED_PIPELINES else 99, n))


def syntax_status() -> tuple[bool, str]:
    """Whether syntax labels can be computed (spaCy with an English pipeline), and what the run records."""
    if importlib.util.find_spec("spacy") is None:
        return False, ("syntax labels not computed: spaCy is not installed (optional: pip install "
                       "'neuron-atlas[syntax]' brings spaCy and an English pipeline)")
    found = english_pipelines()
    if not found:
        return False, ("syntax labels not computed: spaCy has no English pipeline installed (pip install "
                       "'neuron-atlas[syntax]')")
    return True, f"syntax labels from spaCy pipeline {found[0]}"


def load_pipeline(name: str | None = None):
    """The English pipeline with only what tags need (tagger, attribute ruler, parser)."""
    import spacy

    name = name or english_pipelines()[0]
    return spacy.load(name, exclude=["ner", "lemmatizer"])


def tag_names(nlp) -> dict[str, list[str]]:
    """The value names of each tag: ``{"pos": [...], "dep": [...]}`` (ids index these lists)."""
    return {"pos": list(POS_TAGS), "dep": [*nlp.get_pipe("parser").labels, "NONE"]}


def tag_rows(rows: torch.Tensor, vocab: Sequence[str], nlp, *, special_token_ids: Iterable[int] = (),
             batch_size: int = 64, progress: Callable[[int], Any] | None = None) -> dict[str, torch.Tensor]:
    """Tags of every token of ``rows: [n_rows, ctx]``: ``{"pos": [n_rows, ctx] int64, "dep": ...}``,
    ids into :func:`tag_names`. ``vocab[id]`` is a token's text (with its leading space)."""
    names = tag_names(nlp)
    pos_id = {t: i for i, t in enumerate(names["pos"])}
    dep_id = {t: i for i, t in enumerate(names["dep"])}
    special = {int(i) for i in special_token_ids}
    rows_np = rows.cpu().numpy()
    texts, offsets = [], []
    for row in rows_np:
        pieces = ["\n" if int(t) in special else vocab[int(t)] for t in row]
        starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
        firsts = [s + (len(p) - len(p.lstrip())) if p.strip() and int(t) not in special else -1
                  for s, p, t in zip(starts, pieces, row)]
        texts.append("".join(pieces))
        offsets.append(firsts)
    out = {"pos": torch.full(rows.shape, pos_id["NONE"], dtype=torch.int64),
           "dep": torch.full(rows.shape, dep_id["NONE"], dtype=torch.int64)}
    for r, doc in enumerate(nlp.pipe(texts, batch_size=batch_size)):
        char_token = np.full(len(texts[r]) + 1, -1, dtype=np.int64)
        for tok in doc:
            char_token[tok.idx:tok.idx + len(tok.text)] = tok.i
        for c, first in enumerate(offsets[r]):
            if first < 0 or char_token[first] < 0:
                continue
            tok = doc[int(char_token[first])]
            out["pos"][r, c] = pos_id.get(tok.pos_, pos_id["X"])
            out["dep"][r, c] = dep_id.get(tok.dep_, dep_id["NONE"])
        if progress is not None:
            progress(r + 1)
    return out


def tag_dataset(engine, info, n_rows: int, vocab: Sequence[str], special: dict,
                log: Callable[[str], Any]) -> dict[str, Any]:
    """Tag ids of every token of the first ``n_rows`` rows of a stored dataset, and the tag names:
    ``{"ids": {"pos": [n_rows, ctx], "dep": ...}, "names": tag_names(...)}``."""
    import time

    from atlas.ingest.store import load_dataset_rows

    t0 = time.time()
    nlp = load_pipeline()
    rows = load_dataset_rows(engine, info)[:n_rows]
    ids = tag_rows(rows, vocab, nlp, special_token_ids=[i for i in special.values() if i is not None])
    log(f"classify: tagged {rows.numel():,} tokens with spaCy ({time.time() - t0:.1f} s)")
    return {"ids": ids, "names": tag_names(nlp)}
