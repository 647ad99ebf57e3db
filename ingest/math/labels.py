"""Labelling rules (pure: polars frames in, polars frames out).

:func:`label_neurons` turns one wide per-neuron frame (best features, position statistics, top
tokens, vocabulary composition, entropy and attention scores — whatever is present) into labels,
each with a score and a JSON evidence object.

Thresholds live in :class:`LabelThresholds`, defaulting to the paper's values where the paper
gives one (recorded with the run)."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import polars as pl

from atlas.ingest.math.features import normalise
from atlas.ingest.math.lexicon import TOPIC_WORDS

LABELS = ("unigram", "alphabet", "previous_token", "position", "syntax", "semantic", "prediction",
          "suppression", "partition", "entropy", "entropy_candidate", "attention_deactivation")


@dataclass(frozen=True)
class LabelThresholds:
    """Every labelling threshold. ``paper`` = the value the paper used; the others are ours
    (the paper ranks or eyeballs there) and are documented in the README."""

    unigram_vr: float = 0.5  # paper: best current-token unigram feature VR > 0.5
    alphabet_vr: float = 0.35  # paper: best feature "is / starts with letter X", VR > 0.35
    previous_token_vr: float = 0.25  # ours (paper ranks previous-token neurons by VR)
    position_kurtosis: float = 2.0  # paper: activation kurtosis < 2
    position_mi: float = 0.1  # ours, nats (paper: "high" mutual information; its examples ≥ 0.09)
    topic_share: float = 0.5  # ours: share of top tokens in one topic word set
    topic_min_tokens: int = 3  # ours: distinct topic words among the top tokens
    topic_top_k: int = 20  # ours: top tokens considered
    prediction_kurtosis: float = 10.0  # paper: vocab kurtosis > 10, skew > 0
    suppression_kurtosis: float = 10.0  # paper: vocab kurtosis > 10, skew < 0
    partition_var_ratio: float = 10.0  # ours: vocab variance ≥ 10 × a random direction's
    entropy_min_depth: float = 0.8  # ours: layer / (n_layers − 1) ≥ 0.8 ("last layers")
    entropy_norm_ratio: float = 2.0  # ours: ‖w_out‖ ≥ 2 × its layer's median
    entropy_var_ratio: float = 0.5  # ours: vocab variance ≤ 0.5 × a random direction's
    entropy_min_relative_change: float = 0.05  # ours: intervention moves entropy by ≥ 5 %
    attention_z: float = 5.0  # ours: z ≥ 5 against random unit vectors
    family_min_rho: float = 0.5  # ours: partner edges that link seeds into one family
    family_min_members: int = 2

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> LabelThresholds:
        names = {f.name for f in fields(cls)}
        unknown = set(values or {}) - names
        if unknown:
            raise ValueError(f"unknown label thresholds: {sorted(unknown)}")
        return cls(**dict(values or {}))


def syntax_status() -> tuple[bool, str]:
    """Whether syntax labels can be computed (spaCy with an English pipeline), and why not."""
    if importlib.util.find_spec("spacy") is None:
        return False, ("syntax labels skipped: spaCy is not installed (optional; install spaCy and an "
                       "English pipeline such as en_core_web_sm to enable them)")
    for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf"):
        if importlib.util.find_spec(name) is not None:
            return True, f"syntax labels from spaCy pipeline {name}"
    return False, "syntax labels skipped: spaCy has no English pipeline installed (e.g. en_core_web_sm)"


def topic_match(tokens: Iterable[str], topics: Mapping[str, frozenset[str]] = TOPIC_WORDS) -> tuple[str | None, float, list[str]]:
    """The topic word set the most of ``tokens`` belong to: (topic, share of tokens, distinct
    matching words). (None, 0, []) when none matches."""
    words = [normalise(t) for t in tokens]
    if not words:
        return None, 0.0, []
    best: tuple[str | None, float, list[str]] = (None, 0.0, [])
    for topic, vocab in topics.items():
        hits = [w for w in words if w in vocab]
        share = len(hits) / len(words)
        if share > best[1]:
            best = (topic, share, sorted(set(hits)))
    return best


_LABEL_SCHEMA = {"model_id": pl.Int64, "layer": pl.Int64, "idx": pl.Int64, "label": pl.Utf8,
                 "score": pl.Float64, "family_key": pl.Utf8, "evidence": pl.Utf8}


def _num(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def json_safe(obj: Any) -> Any:
    """JSON-safe evidence: NaN/inf become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def label_neurons(table: pl.DataFrame, thresholds: LabelThresholds = LabelThresholds(), *,
                  entropy_effects: Mapping[tuple, dict] | None = None) -> pl.DataFrame:
    """Labels for the neurons of ``table`` (one row per neuron).

    Columns read when present (a label whose inputs are absent is not produced): ``model_id``,
    ``layer``, ``idx``; from :meth:`atlas.ingest.math.features.FeatureScores.summary`: ``best_*``, ``cur_*``,
    ``unigram_*``, ``prev_*``, ``pos_*``; ``kurtosis`` (activation), ``position_mi`` (nats);
    ``top_tokens`` (list of token texts); ``vocab_kurtosis``, ``vocab_skew``, ``vocab_var_ratio``,
    ``top_token_text``, ``bottom_token_text``, ``w_out_norm``; ``entropy_candidate``,
    ``entropy_norm_ratio``; ``attn_z``, ``attn_score``, ``attn_percentile``, ``attn_head_layer``,
    ``attn_head``. ``entropy_effects`` maps (model_id, layer, idx) to
    :func:`atlas.ingest.math.roles.entropy_effect` results.

    Returns ``model_id, layer, idx, label, score, family_key, evidence`` (evidence: JSON text)."""
    t = thresholds
    cols = set(table.columns)
    out: list[dict[str, Any]] = []
    entropy_effects = entropy_effects or {}

    def add(row: Mapping[str, Any], label: str, score: float, key: str | None, evidence: dict) -> None:
        out.append({"model_id": row.get("model_id"), "layer": row["layer"], "idx": row["idx"], "label": label,
                    "score": float(score), "family_key": key, "evidence": json.dumps(json_safe(evidence), sort_keys=True)})

    for row in table.iter_rows(named=True):
        # ---- token features
        uv = _num(row, "unigram_vr")
        if uv is not None and uv > t.unigram_vr:
            add(row, "unigram", uv, row["unigram_feature"], {
                "rule": f"best current-token unigram feature VR > {t.unigram_vr}",
                "feature": row["unigram_feature"], "variance_reduction": uv,
                "best_current_feature": row.get("cur_feature"), "best_current_vr": _num(row, "cur_vr")})
        cv = _num(row, "cur_vr")
        if cv is not None and row.get("cur_kind") == "alphabet" and cv > t.alphabet_vr:
            add(row, "alphabet", cv, row["cur_feature"], {
                "rule": f"best current-token feature is 'is / starts with letter X', VR > {t.alphabet_vr}",
                "feature": row["cur_feature"], "variance_reduction": cv})
        bv = _num(row, "best_vr")
        if bv is not None and row.get("best_on_previous") and bv > t.previous_token_vr:
            add(row, "previous_token", bv, f"previous {row['best_feature']}", {
                "rule": f"best feature is on the previous token, VR > {t.previous_token_vr}",
                "feature": row["best_feature"], "feature_kind": row.get("best_kind"), "variance_reduction": bv,
                "best_current_feature": row.get("cur_feature"), "best_current_vr": cv})
        # ---- position
        k, mi = _num(row, "kurtosis"), _num(row, "position_mi")
        if k is not None and mi is not None and k < t.position_kurtosis and mi >= t.position_mi:
            add(row, "position", mi, row.get("pos_feature"), {
                "rule": f"activation kurtosis < {t.position_kurtosis} and position mutual information ≥ {t.position_mi} nats",
                "kurtosis": k, "position_mi": mi, "best_position_feature": row.get("pos_feature"),
                "best_position_vr": _num(row, "pos_vr")})
        # ---- semantic / topic
        if "top_tokens" in cols and row.get("top_tokens"):
            top = list(row["top_tokens"])[: t.topic_top_k]
            topic, share, words = topic_match(top)
            if topic is not None and share >= t.topic_share and len(words) >= t.topic_min_tokens:
                add(row, "semantic", share, f"topic={topic}", {
                    "rule": f"≥ {t.topic_share:.0%} of the top tokens (and ≥ {t.topic_min_tokens} words) in one topic word set",
                    "topic": topic, "share": share, "matching_words": words, "top_tokens": top})
        # ---- vocabulary composition
        vk, vs = _num(row, "vocab_kurtosis"), _num(row, "vocab_skew")
        if vk is not None and vs is not None:
            comp = {"vocab_kurtosis": vk, "vocab_skew": vs, "vocab_var_ratio": _num(row, "vocab_var_ratio"),
                    "top_token": row.get("top_token_text"), "bottom_token": row.get("bottom_token_text")}
            if vk > t.prediction_kurtosis and vs > 0:
                add(row, "prediction", vk, f"boosts {row.get('top_token_text')!r}",
                    {"rule": f"vocab kurtosis > {t.prediction_kurtosis} and vocab skew > 0", **comp})
            if vk > t.suppression_kurtosis and vs < 0:
                add(row, "suppression", vk, f"suppresses {row.get('bottom_token_text')!r}",
                    {"rule": f"vocab kurtosis > {t.suppression_kurtosis} and vocab skew < 0", **comp})
            vr_ratio = _num(row, "vocab_var_ratio")
            if vr_ratio is not None and vr_ratio >= t.partition_var_ratio and vk <= t.prediction_kurtosis:
                add(row, "partition", vr_ratio, None, {
                    "rule": f"vocab variance ≥ {t.partition_var_ratio} × a random direction's, kurtosis ≤ {t.prediction_kurtosis}",
                    **comp})
        # ---- entropy
        if row.get("entropy_candidate"):
            key = (row.get("model_id"), row["layer"], row["idx"])
            effect = entropy_effects.get(key)
            cand = {"w_out_norm": _num(row, "w_out_norm"), "norm_ratio": _num(row, "entropy_norm_ratio"),
                    "vocab_var_ratio": _num(row, "vocab_var_ratio"),
                    "candidate_rule": (f"layer depth ≥ {t.entropy_min_depth}, ‖w_out‖ ≥ {t.entropy_norm_ratio} × layer median, "
                                       f"vocab variance ≤ {t.entropy_var_ratio} × a random direction's")}
            if effect is not None and effect.get("confirmed"):
                add(row, "entropy", abs(effect["relative_entropy_change"]), effect.get("direction"), {
                    **cand, "intervention": effect,
                    "rule": f"candidate, and fixing the activation moves next-token entropy by ≥ {t.entropy_min_relative_change:.0%} with the final LayerNorm scale"})
            else:
                add(row, "entropy_candidate", _num(row, "entropy_norm_ratio") or 0.0, None, {
                    **cand, "intervention": effect, "rule": "candidate by weights; intervention " +
                    ("did not confirm it" if effect is not None else "not run")})
        # ---- attention deactivation
        z = _num(row, "attn_z")
        if z is not None and z >= t.attention_z:
            head = f"L{int(row['attn_head_layer'])}H{int(row['attn_head'])}"
            add(row, "attention_deactivation", z, head, {
                "rule": f"ŵ_outᵀ W_Q k_BOS / sqrt(d_head) z-score ≥ {t.attention_z} against random unit vectors",
                "head": head, "z": z, "score": _num(row, "attn_score"), "percentile": _num(row, "attn_percentile")})
    return pl.DataFrame(out, schema=_LABEL_SCHEMA)
