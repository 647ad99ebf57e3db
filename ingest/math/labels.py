"""Labelling rules (pure: polars frames in, polars frames out), as the paper defines them
(method.md §4; Gurnee et al. 2024 and their analysis code), with our own rules beside them where
the paper ranks or eyeballs (each threshold says which).

:func:`label_neurons` turns one wide per-neuron frame (best features, position statistics, top
tokens, vocabulary composition, weight penalties, entropy and attention scores — whatever is
present) into labels, each with a score and a JSON evidence object; :func:`evaluated_labels`
says which rules had their inputs (a rule that was evaluated and found nothing has count 0).

Thresholds live in :class:`LabelThresholds` (recorded with the run)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import polars as pl

from atlas.ingest.math.features import normalise
from atlas.ingest.math.lexicon import TOPIC_WORDS

LABELS = ("unigram", "alphabet", "previous_token", "position", "syntax", "semantic", "prediction",
          "suppression", "partition", "entropy", "entropy_candidate", "attention_deactivation",
          "attention_activation")


@dataclass(frozen=True)
class LabelThresholds:
    """Every labelling threshold. ``paper`` = the value the paper used; ``ours`` = where the paper
    ranks or eyeballs (or gives a model-specific number) and the atlas needs a rule; the README
    says why each differs."""

    unigram_vr: float = 0.5  # paper: best current-token feature (any kind) VR > 0.5
    alphabet_vr: float = 0.35  # paper: VR on the letter's feature > 0.35, whatever the best feature
    previous_token_top: int = 25  # paper: the top 25 neurons of a model by previous-token VR (0 = no cap)
    previous_token_vr: float = 0.25  # ours: and that VR above this floor
    position_kurtosis: float = 2.0  # paper: activation kurtosis < 2 (every position, BOS included)
    position_mi: float = 0.08  # ours, nats, per position: admits the paper's L5.386 (0.09 nats)
    syntax_vr: float = 0.25  # ours: best feature is a part-of-speech/dependency tag with VR above this
    topic_share: float = 0.5  # ours: share of top tokens in one topic word set
    topic_min_tokens: int = 3  # ours: distinct topic words among the top tokens
    topic_top_k: int = 20  # ours: top tokens considered
    prediction_kurtosis: float = 10.0  # paper: vocab kurtosis > 10, skew > 0
    suppression_kurtosis: float = 10.0  # paper: vocab kurtosis > 10, skew < 0
    partition_vocab_var: float = 0.005  # paper: vocab variance > 0.005
    partition_min_var_ratio: float = 3.0  # ours: and ≥ 3× a random direction's (binds only when d_model < ~600)
    entropy_min_depth: float = 0.8  # ours: layer / (n_layers − 1) ≥ 0.8 (paper: its models' last 2 layers)
    entropy_l2_ratio: float = 2.0  # ours: ‖w_in‖² + ‖w_out‖² ≥ 2× its layer's median (paper: absolute 3 / 1 / 2)
    entropy_min_l2_penalty: float = 0.0  # paper's absolute cut, model-specific (GPT2-small 3, medium 1, Pythia 2)
    entropy_var_ratio: float = 0.5  # ours: vocab variance ≤ 0.5× a random direction's (paper: ≤ 0.001 ≈ 0.8×)
    entropy_max_vocab_kurtosis: float = 10.0  # paper: vocab kurtosis ≤ 10
    entropy_max_kurtosis: float = 10.0  # paper: activation kurtosis ≤ 10
    entropy_min_relative_change: float = 0.05  # ours: intervention moves entropy by ≥ 5 %
    attention_z: float = 5.0  # ours: |z| ≥ 5 against random unit vectors at the head of largest |score|
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


# which input columns each rule reads: a rule whose inputs are present was evaluated
_RULE_INPUTS = {
    "unigram": ("cur_vr",), "alphabet": ("alphabet_vr",), "previous_token": ("prev_vr",),
    "position": ("kurtosis", "position_mi"), "syntax": ("syntax_vr",), "semantic": ("top_tokens",),
    "prediction": ("vocab_kurtosis", "vocab_skew"), "suppression": ("vocab_kurtosis", "vocab_skew"),
    "partition": ("vocab_var", "vocab_var_ratio"), "entropy": ("entropy_candidate",),
    "entropy_candidate": ("entropy_candidate",), "attention_deactivation": ("attn_z", "attn_score"),
    "attention_activation": ("attn_z", "attn_score"),
}


def evaluated_labels(columns: Iterable[str]) -> list[str]:
    """The labels whose rule has its inputs among ``columns`` (in :data:`LABELS` order)."""
    have = set(columns)
    return [label for label in LABELS if all(c in have for c in _RULE_INPUTS[label])]


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


def _previous_token_ranks(table: pl.DataFrame) -> dict[tuple, int]:
    """Rank (1 = best) of every neuron by its best previous-token VR within its model."""
    if "prev_vr" not in table.columns:
        return {}
    model = pl.col("model_id") if "model_id" in table.columns else pl.lit(None)
    ranked = (table.select(model.alias("model_id"), "layer", "idx", pl.col("prev_vr").fill_nan(None))
              .filter(pl.col("prev_vr").is_not_null())
              .with_columns(pl.col("prev_vr").rank("ordinal", descending=True).over("model_id").alias("rank")))
    return {(r["model_id"], r["layer"], r["idx"]): int(r["rank"]) for r in ranked.iter_rows(named=True)}


def label_neurons(table: pl.DataFrame, thresholds: LabelThresholds = LabelThresholds(), *,
                  entropy_effects: Mapping[tuple, dict] | None = None) -> pl.DataFrame:
    """Labels for the neurons of ``table`` (one row per neuron).

    Columns read when present (a label whose inputs are absent is not produced, see
    :func:`evaluated_labels`): ``model_id``, ``layer``, ``idx``; from
    :meth:`atlas.ingest.math.variance_reduction.FeatureScores.summary`: ``best_*``, ``cur_*``,
    ``prev_*``, ``pos_*``, ``syntax_*``, ``alphabet_*``; ``kurtosis`` (activation, every position),
    ``position_mi`` (nats, per position), ``firing_rate``; ``top_tokens`` (list of token texts);
    ``vocab_var``, ``vocab_kurtosis``, ``vocab_skew``, ``vocab_var_ratio``, ``top_token_text``,
    ``bottom_token_text``; ``entropy_candidate`` and its evidence columns
    (:func:`atlas.ingest.math.roles.mark_entropy_candidates`); ``attn_score``, ``attn_z``,
    ``attn_percentile``, ``attn_head_layer``, ``attn_head``. ``entropy_effects`` maps
    (model_id, layer, idx) to :func:`atlas.ingest.math.roles.entropy_effect` results.

    Returns ``model_id, layer, idx, label, score, family_key, evidence`` (evidence: JSON text)."""
    t = thresholds
    cols = set(table.columns)
    out: list[dict[str, Any]] = []
    entropy_effects = entropy_effects or {}
    prev_rank = _previous_token_ranks(table)

    def add(row: Mapping[str, Any], label: str, score: float, key: str | None, evidence: dict) -> None:
        out.append({"model_id": row.get("model_id"), "layer": row["layer"], "idx": row["idx"], "label": label,
                    "score": float(score), "family_key": key, "evidence": json.dumps(json_safe(evidence), sort_keys=True)})

    for row in table.iter_rows(named=True):
        # ---- token features
        cv = _num(row, "cur_vr")
        if cv is not None and cv > t.unigram_vr:
            add(row, "unigram", cv, row["cur_feature"], {
                "rule": f"best current-token feature (any kind) VR > {t.unigram_vr} (paper)",
                "feature": row["cur_feature"], "feature_kind": row.get("cur_kind"), "variance_reduction": cv})
        av = _num(row, "alphabet_vr")
        if av is not None and av > t.alphabet_vr:
            letter = row["alphabet_letter"]
            add(row, "alphabet", av, f"letter={letter}", {
                "rule": f"VR on the letter's feature > {t.alphabet_vr}, whatever the best feature (paper)",
                "letter": letter, "feature": row.get("alphabet_feature"), "variance_reduction": av,
                "starts_with_vr": _num(row, "alphabet_starts_vr"), "letter_alone_vr": _num(row, "alphabet_letter_vr"),
                "best_current_feature": row.get("cur_feature"), "best_current_vr": cv})
        pv = _num(row, "prev_vr")
        rank = prev_rank.get((row.get("model_id"), row["layer"], row["idx"]))
        within_top = t.previous_token_top <= 0 or (rank is not None and rank <= t.previous_token_top)
        if pv is not None and pv > t.previous_token_vr and within_top:
            add(row, "previous_token", pv, f"previous {row['prev_feature']}", {
                "rule": (f"among the model's top {t.previous_token_top} by previous-token VR (paper) and that VR > "
                         f"{t.previous_token_vr} (ours)"),
                "feature": row["prev_feature"], "feature_kind": row.get("prev_kind"), "variance_reduction": pv,
                "rank": rank, "best_current_feature": row.get("cur_feature"), "best_current_vr": cv})
        sv = _num(row, "syntax_vr")
        bv = _num(row, "best_vr")
        if sv is not None and bv is not None and row.get("best_kind") == "syntax" and bv > t.syntax_vr:
            add(row, "syntax", bv, ("previous " if row.get("best_on_previous") else "") + row["best_feature"], {
                "rule": f"best feature is a part-of-speech/dependency tag (paper), VR > {t.syntax_vr} (ours)",
                "feature": row["best_feature"], "on_previous": row.get("best_on_previous"), "variance_reduction": bv})
        # ---- position
        k, mi = _num(row, "kurtosis"), _num(row, "position_mi")
        if k is not None and mi is not None and k < t.position_kurtosis and mi >= t.position_mi:
            add(row, "position", mi, row.get("pos_feature"), {
                "rule": (f"activation kurtosis < {t.position_kurtosis} (paper; every position) and mutual information "
                         f"between firing and position ≥ {t.position_mi} nats (per position)"),
                "kurtosis": k, "position_mi": mi, "firing_rate": _num(row, "firing_rate"),
                "best_position_feature": row.get("pos_feature"), "best_position_vr": _num(row, "pos_vr")})
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
        var, var_ratio = _num(row, "vocab_var"), _num(row, "vocab_var_ratio")
        comp = {"vocab_kurtosis": vk, "vocab_skew": vs, "vocab_var": var, "vocab_var_ratio": var_ratio,
                "top_token": row.get("top_token_text"), "bottom_token": row.get("bottom_token_text")}
        if vk is not None and vs is not None:
            if vk > t.prediction_kurtosis and vs > 0:
                add(row, "prediction", vk, f"boosts {row.get('top_token_text')!r}",
                    {"rule": f"vocab kurtosis > {t.prediction_kurtosis} and vocab skew > 0 (paper)", **comp})
            if vk > t.suppression_kurtosis and vs < 0:
                add(row, "suppression", vk, f"suppresses {row.get('bottom_token_text')!r}",
                    {"rule": f"vocab kurtosis > {t.suppression_kurtosis} and vocab skew < 0 (paper)", **comp})
        if var is not None and var_ratio is not None and var > t.partition_vocab_var and var_ratio >= t.partition_min_var_ratio:
            add(row, "partition", var, None, {
                "rule": (f"vocab variance > {t.partition_vocab_var} (paper) and ≥ {t.partition_min_var_ratio}× a random "
                         "direction's (ours)"), **comp})
        # ---- entropy
        if row.get("entropy_candidate"):
            key = (row.get("model_id"), row["layer"], row["idx"])
            effect = entropy_effects.get(key)
            cand = {"l2_penalty": _num(row, "l2_penalty"), "l2_ratio": _num(row, "l2_ratio"),
                    "w_out_norm": _num(row, "w_out_norm"), "vocab_var_ratio": var_ratio, "vocab_kurtosis": vk,
                    "kurtosis": _num(row, "kurtosis"),
                    "candidate_rule": (f"layer depth ≥ {t.entropy_min_depth}, ‖w_in‖² + ‖w_out‖² ≥ {t.entropy_l2_ratio}× "
                                       f"its layer's median and ≥ {t.entropy_min_l2_penalty}, vocab variance ≤ "
                                       f"{t.entropy_var_ratio}× a random direction's, vocab kurtosis ≤ "
                                       f"{t.entropy_max_vocab_kurtosis}, activation kurtosis ≤ {t.entropy_max_kurtosis}")}
            if effect is not None and effect.get("confirmed"):
                add(row, "entropy", abs(effect["relative_entropy_change"]), effect.get("direction"), {
                    **cand, "intervention": effect,
                    "rule": f"candidate, and fixing the activation moves next-token entropy by ≥ {t.entropy_min_relative_change:.0%} with the final LayerNorm scale"})
            else:
                add(row, "entropy_candidate", _num(row, "l2_ratio") or 0.0, None, {
                    **cand, "intervention": effect, "rule": "candidate by weights; intervention " +
                    ("did not confirm it" if effect is not None else "not run")})
        # ---- attention (de)activation
        z, score = _num(row, "attn_z"), _num(row, "attn_score")
        if z is not None and score is not None and abs(z) >= t.attention_z:
            head = f"L{int(row['attn_head_layer'])}H{int(row['attn_head'])}"
            label = "attention_deactivation" if score > 0 else "attention_activation"
            add(row, label, abs(score), head, {
                "rule": (f"head of largest |ŵ_outᵀ W_Q k_BOS| / sqrt(d_head) (paper), |z| ≥ {t.attention_z} against random "
                         "unit vectors (ours); positive pushes the head onto BOS (deactivation), negative pulls it away"),
                "head": head, "score": score, "sign": 1 if score > 0 else -1, "z": z,
                "percentile": _num(row, "attn_percentile")})
    return pl.DataFrame(out, schema=_LABEL_SCHEMA)
