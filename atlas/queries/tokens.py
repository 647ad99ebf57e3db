"""Search by token: vocabulary entries, and the neurons that fire on them (current stats runs)."""

from __future__ import annotations

from typing import Literal

import polars as pl
from sqlalchemy.engine import Engine

from atlas.errors import AtlasError
from atlas.queries._sql import ModelRef, Where, frame, labels_of

TokenMatch = Literal["exact", "word", "contains"]


def _token_condition(match: TokenMatch, text: str) -> Where:
    if match == "exact":
        return Where().add("v.text = :q", q=text)
    if match == "word":  # ' The', 'the', 'THE' all match "the"
        return Where().add("lower(btrim(v.text)) = lower(btrim(:q))", q=text)
    if match == "contains":
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return Where().add("v.text ILIKE :q ESCAPE '\\'", q=f"%{escaped}%")
    raise AtlasError(f"unknown token match {match!r} — use exact, word or contains")


def search_tokens(engine: Engine, text: str, *, match: TokenMatch = "word", limit: int = 50) -> pl.DataFrame:
    """Vocabulary entries matching ``text``: ``tokenizer, token_id, token``.

    ``match``: ``exact`` (the stored text, leading space included: ``' the'``), ``word``
    (trimmed, case-insensitive: "the" finds ' the', 'The', ' The'), ``contains`` (substring,
    case-insensitive; % and _ are literal).

    >>> search_tokens(engine, "the", match="word")   # doctest: +SKIP
    """
    token = _token_condition(match, text)
    return frame(engine, f"""
        SELECT t.name AS tokenizer, v.token_id, v.text AS token
        FROM vocab_token v JOIN tokenizer t ON t.id = v.tokenizer_id
        WHERE true {token.sql}
        ORDER BY length(v.text), v.token_id LIMIT :limit
    """, token.params | {"limit": int(limit)})


def neurons_for_token(engine: Engine, text: str, *, match: TokenMatch = "word", model: ModelRef | None = None,
                      cohort: str | None = None, limit: int = 100) -> pl.DataFrame:
    """"Which neurons fire on ' the'?": neurons that keep a matching token among their top tokens,
    by mean ``hook_post`` when it is the current token: ``model, layer, idx, token, token_id,
    mean_act, max_act, count, excess, labels``.

    >>> neurons_for_token(engine, " the", match="exact").head(3)   # doctest: +SKIP
    """
    token = _token_condition(match, text)
    where = Where().scope(engine, cohort=cohort, model=model)
    # Materialised steps keep the plan small: the matching tokens (few), their activation rows via
    # the (token_id, model_id) index, the best `limit` of them, and only then universality and labels.
    return frame(engine, f"""
        WITH tok AS MATERIALIZED (SELECT v.tokenizer_id, v.token_id, v.text FROM vocab_token v
                                  WHERE true {token.sql} LIMIT 500),
        hits AS MATERIALIZED (
            SELECT ta.model_id, ta.layer, ta.idx, ta.token_id, tok.text, ta.mean_act, ta.max_act, ta.count
            FROM tok
            JOIN model m ON m.tokenizer_id = tok.tokenizer_id
            LEFT JOIN cohort c ON c.id = m.cohort_id
            JOIN current_token_activation ta ON ta.token_id = tok.token_id AND ta.model_id = m.id
            WHERE true {where.sql}
            ORDER BY ta.mean_act DESC, ta.model_id, ta.layer, ta.idx LIMIT :limit
        )
        SELECT m.name AS model, c.name AS cohort, h.layer::int AS layer, h.idx, h.text AS token, h.token_id,
               h.mean_act::float8 AS mean_act, h.max_act::float8 AS max_act, h.count,
               (SELECT u.excess::float8 FROM current_neuron_universality u
                 WHERE u.model_id = h.model_id AND u.layer = h.layer AND u.idx = h.idx LIMIT 1) AS excess,
               {labels_of("h")} AS labels
        FROM hits h JOIN model m ON m.id = h.model_id LEFT JOIN cohort c ON c.id = m.cohort_id
        ORDER BY h.mean_act DESC, m.name, h.layer, h.idx
    """, token.params | where.params | {"limit": int(limit)})
