"""A label's or a family's evidence (the JSON a classify run stored) as a sentence a researcher
reads, with model names instead of ids. Unknown keys are listed as ``key = value`` so nothing stored
is hidden; the raw JSON stays one click away on the page."""

from __future__ import annotations

from typing import Any, Callable, Mapping


def _pct(x: Any) -> str:
    return "—" if x is None else f"{float(x):.0%}"


def _num(x: Any, spec: str = ".3f") -> str:
    return "—" if x is None else format(float(x), spec)


def _q(x: Any) -> str:
    return "—" if x is None else repr(str(x))


_SENTENCES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "unigram": lambda e: (f"The current token explains it: the feature {e.get('feature')} removes "
                          f"{_pct(e.get('variance_reduction'))} of its activation variance."),
    "alphabet": lambda e: (f"It fires on tokens of the letter {_q(e.get('letter'))}: the letter's feature explains "
                           f"{_pct(e.get('variance_reduction'))} of its variance (its best current-token feature is "
                           f"{e.get('best_current_feature')}, {_pct(e.get('best_current_vr'))})."),
    "previous_token": lambda e: (f"The previous token explains it: {e.get('feature')} removes "
                                 f"{_pct(e.get('variance_reduction'))} of its variance, rank {e.get('rank', '—')} in its "
                                 f"model by previous-token variance reduction."),
    "syntax": lambda e: (f"The {'previous' if e.get('on_previous') else 'current'} token's grammatical role explains it: "
                         f"{e.get('feature')} removes {_pct(e.get('variance_reduction'))} of its variance."),
    "position": lambda e: (f"It follows the position in the context: firing and position share "
                           f"{_num(e.get('position_mi'))} nats of mutual information, with activation kurtosis "
                           f"{_num(e.get('kurtosis'), '.2f')}."),
    "semantic": lambda e: (f"{_pct(e.get('share'))} of its top tokens are {e.get('topic')} words: "
                           f"{', '.join(map(repr, (e.get('matching_words') or [])[:8]))}."),
    "prediction": lambda e: (f"It raises the logits of a small set of tokens, most {_q(e.get('top_token'))}: vocab "
                             f"kurtosis {_num(e.get('vocab_kurtosis'), '.1f')}, skew {_num(e.get('vocab_skew'), '+.2f')}."),
    "suppression": lambda e: (f"It lowers the logits of a small set of tokens, most {_q(e.get('bottom_token'))}: vocab "
                              f"kurtosis {_num(e.get('vocab_kurtosis'), '.1f')}, skew {_num(e.get('vocab_skew'), '+.2f')}."),
    "partition": lambda e: (f"It splits the vocabulary in two: vocabulary variance {_num(e.get('vocab_var'), '.4f')}, "
                            f"{_num(e.get('vocab_var_ratio'), '.1f')}× a random direction's."),
    "entropy": lambda e: ("Fixing its activation moves next-token entropy "
                          f"({_pct((e.get('intervention') or {}).get('relative_entropy_change'))}) together with the final "
                          f"LayerNorm scale; weight norm ‖w_in‖² + ‖w_out‖² = {_num(e.get('l2_penalty'), '.2f')}."),
    "entropy_candidate": lambda e: (f"Its weights look like an entropy neuron's (‖w_in‖² + ‖w_out‖² = "
                                    f"{_num(e.get('l2_penalty'), '.2f')}, {_num(e.get('l2_ratio'), '.1f')}× its layer's "
                                    f"median, little effect on the vocabulary); {e.get('rule', '')}."),
    "attention_deactivation": lambda e: (f"It pushes head {e.get('head')} onto the BOS token, switching the head off "
                                         f"(score {_num(e.get('score'), '+.3f')}, z {_num(e.get('z'), '.1f')})."),
    "attention_activation": lambda e: (f"It pulls head {e.get('head')} away from the BOS token, switching the head on "
                                       f"(score {_num(e.get('score'), '+.3f')}, z {_num(e.get('z'), '.1f')})."),
}


def label_sentence(label: str, score: float | None, evidence: Mapping[str, Any] | None) -> str:
    """What a label means for this neuron, from its stored evidence."""
    e = dict(evidence or {})
    make = _SENTENCES.get(label)
    if make is not None:
        try:
            return make(e)
        except (TypeError, ValueError):
            pass
    shown = ", ".join(f"{k} = {v}" for k, v in e.items() if k != "rule")
    return f"{label} (score {_num(score)}){': ' + shown if shown else ''}."


def family_sentence(evidence: Mapping[str, Any] | None, models: list[str], n_members: int, n_models: int) -> str:
    """A family's evidence as a sentence: its members, its models (by name, as the query layer gives
    them; the stored evidence has model ids), layers and cross-seed links."""
    e = dict(evidence or {})
    parts = [f"{n_members} neurons in {n_models} model{'s' if n_models != 1 else ''}"
             + (f" ({', '.join(models)})" if models else "")]
    if e.get("layers"):
        parts.append(f"layers {', '.join(map(str, e['layers']))}")
    if e.get("n_cross_seed_edges"):
        parts.append(f"linked across seeds by {e['n_cross_seed_edges']} partner edges (mean rho "
                     f"{_num(e.get('mean_edge_rho'), '.2f')}, each ≥ {e.get('min_rho', '—')})")
    if e.get("every_seed"):
        parts.append("in every seed of the cohort")
    elif e.get("n_models_total"):
        parts.append(f"in {n_models} of the cohort's {e['n_models_total']} seeds")
    if e.get("feature") and not e.get("family_key"):
        parts.append(f"feature {e['feature']}")
    return "; ".join(parts) + "."
