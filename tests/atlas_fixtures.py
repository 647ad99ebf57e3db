"""A small SYNTHETIC atlas with planted ground truth, written through the real write path.

``build_synthetic_atlas(engine)`` fills a migrated database with a tokenizer and vocabulary, a
cohort of 3 models × 2 layers × 16 neurons, a token dataset, and done runs of every kind
(``stats``, ``weights``, ``correlation``, ``examples``, ``classify``). Every model has the same five *planted
features*, at different (layer, idx) in each model: ``the`` (fires on ' the'), ``newline`` (fires on
newlines), ``prev_the`` (fires after ' the'), ``position`` (grows with the position) and ``punct``
(fires on punctuation); all other neurons are independent noise, and one neuron per model is dead
(constant). In the reference model synth-a they sit at documented places: the (0, 3), newline
(0, 7), prev_the (1, 2), position (1, 9), punct (0, 12).

What is computed and what is written by hand (tests must know which is which):

- **computed** from the planted activations, in float64 numpy (no torch, not the ingestion code):
  activation statistics and histograms, top examples, quantile examples (one at the middle of
  each fifth of the sorted firing values; exact, where ingestion samples) and the most negative
  examples, per-token activations, cross-seed correlations with a random orthogonal rotation
  baseline (so the planted neurons come out universal and nothing else does), the activation
  windows of every example (24 tokens before, 8 after) and of each partner's best neuron over the
  reference's top-3 examples, and the variance-reduction features of ``neuron_feature``;
- **random**: weight statistics (each model's "prediction" neuron gets three boosted tokens);
- **written from the ground truth, not computed**: labels and families. Each planted neuron gets
  its feature's label (score: its variance reduction), each model's prediction neuron the label
  ``prediction``, and each feature one family of its three planted neurons. The classifier that
  computes labels and families from real models is tested in test_families.py and
  test_classify_run.py; here the rows only give the query layer something known to read. The
  classify run's ``params.result.label_counts`` lists every label "evaluated", 0 for alphabet and
  suppression (as a real run records labels it found nothing for).

A query test may therefore assert planted positions, the stored data and the written label and
family rows; re-checking a formula this fixture used to write a column (e.g. ``excess =
mean_corr − mean_baseline``) would only test the fixture. Results are published with
``atlas.runs.begin_run``/``publish`` (COPY through ``atlas.copy.copy_frame``), like real ingestion.
``include_unfinished`` adds a running and a failed run for the runs page. Used by the query, docs,
UI and security tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from atlas.copy import copy_frame
from atlas.runs import begin_run

VOCAB = [
    "<|endoftext|>", "\n", "\n\n", " the", " a", " of", " and", " to", " in", " is", " was", " it",
    " that", "The", " The", " cat", " dog", " sat", " on", " mat", " king", " queen", " said",
    " Hamlet", " love", " sword", ".", ",", "!", "?", ":", ";", " 1600", " 1999", " 42", "A", "B",
    "ing", "ed", " x", " y", " alpha", " beta", "<b>bold</b>", " & co", "%", "_", " O'Neil",
]
BOS = 0
THE = VOCAB.index(" the")
NEWLINES = (VOCAB.index("\n"), VOCAB.index("\n\n"))
PUNCT = tuple(VOCAB.index(t) for t in (".", ",", "!", "?"))
FEATURES = ("the", "newline", "prev_the", "position", "punct")
HIST_EDGES = [float(x) for x in np.linspace(-10.0, 15.0, 51)]
MODEL_NAMES = ("synth-a", "synth-b", "synth-c")
COHORT = "synth"
DATASET = "synth-tokens"


@dataclass
class SyntheticAtlas:
    """What was written, and the planted ground truth."""

    tokenizer_id: int
    cohort_id: int
    dataset_id: int
    model_ids: dict[str, int]
    n_layers: int
    d_mlp: int
    planted: dict[str, dict[str, tuple[int, int]]]  # feature -> model name -> (layer, idx)
    dead: dict[str, tuple[int, int]]  # model name -> (layer, idx) of its dead neuron
    prediction: dict[str, tuple[int, int]]  # model name -> neuron labelled "prediction"
    run_ids: dict[str, int] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return MODEL_NAMES[0]

    def planted_in(self, model: str) -> set[tuple[int, int]]:
        """The (layer, idx) of the five planted neurons of ``model``."""
        return {where[model] for where in self.planted.values()}


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _moments(x: np.ndarray) -> tuple[float, float, float | None, float | None]:
    mean = float(x.mean())
    var = float(x.var())
    if var <= 1e-12:
        return mean, var, None, None
    z = (x - mean) / np.sqrt(var)
    return mean, var, float((z**3).mean()), float((z**4).mean())


def _tokens(rng: np.random.Generator, n_rows: int, ctx: int) -> np.ndarray:
    weights = np.ones(len(VOCAB))
    weights[BOS] = 0.0
    weights[THE] = 6.0
    weights[list(NEWLINES)] = 2.0
    weights[list(PUNCT)] = 2.0
    weights /= weights.sum()
    rows = rng.choice(len(VOCAB), size=(n_rows, ctx), p=weights)
    rows[:, 0] = BOS
    return rows


def _planted_signal(feature: str, tokens: np.ndarray) -> np.ndarray:
    prev = np.concatenate([np.full((tokens.shape[0], 1), BOS), tokens[:, :-1]], axis=1)
    pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    if feature == "the":
        return -2.0 + 6.0 * (tokens == THE)
    if feature == "newline":
        return -2.0 + 5.0 * np.isin(tokens, NEWLINES)
    if feature == "prev_the":
        return -2.0 + 5.0 * (prev == THE)
    if feature == "position":
        return -3.0 + pos / 2.0
    if feature == "punct":
        return -2.0 + 4.0 * np.isin(tokens, PUNCT)
    raise ValueError(feature)


def _candidate_features(tokens: np.ndarray) -> dict[str, tuple[str, bool, np.ndarray]]:
    """Binary token features: name -> (kind, on_previous, mask [rows, ctx])."""
    prev = np.concatenate([np.full((tokens.shape[0], 1), BOS), tokens[:, :-1]], axis=1)
    out: dict[str, tuple[str, bool, np.ndarray]] = {}
    for tok in (THE, VOCAB.index(" a"), VOCAB.index(" of"), VOCAB.index(" cat"), *NEWLINES):
        out[f"token={VOCAB[tok]!r}"] = ("unigram", False, tokens == tok)
        out[f"previous token={VOCAB[tok]!r}"] = ("unigram", True, prev == tok)
    out["is_newline"] = ("class", False, np.isin(tokens, NEWLINES))
    out["is_punctuation"] = ("class", False, np.isin(tokens, PUNCT))
    out["position>=8"] = ("position", False, np.broadcast_to(np.arange(tokens.shape[1]) >= 8, tokens.shape))
    return out


def _variance_reduction(act: np.ndarray, mask: np.ndarray) -> float:
    var = act.var()
    if var <= 1e-12 or mask.all() or not mask.any():
        return 0.0
    p1 = mask.mean()
    within = (1 - p1) * act[~mask].var() + p1 * act[mask].var()
    return float((var - within) / var)


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson rho between columns of x [n, a] and y [n, b]; NaN where a column is constant."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sx, sy = np.sqrt((xc**2).sum(0)), np.sqrt((yc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (xc.T @ yc) / np.outer(sx, sy)
    rho[sx <= 1e-9, :] = np.nan
    rho[:, sy <= 1e-9] = np.nan
    return rho


def _nanmax_arg(rho: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    filled = np.where(np.isnan(rho), -np.inf, rho)
    arg = filled.argmax(axis)
    val = filled.max(axis)
    val = np.where(np.isinf(val), np.nan, val)
    return val, np.where(np.isnan(val), -1, arg)


WINDOW = (24, 8)  # tokens stored before and after an example's token


def _sampled_examples(post: np.ndarray, model_id: int, d_mlp: int, ctx: int, quantiles: int = 5,
                      bottom: int = 3) -> pl.DataFrame:
    """Quantile examples (one per band of the sorted firing values, at the band's middle) and the
    ``bottom`` most negative tokens of each neuron; post is [tokens, neurons] with BOS dropped nowhere."""
    out = {k: [] for k in ("model_id", "layer", "idx", "kind", "rank", "row_idx", "position", "value", "quantile")}

    def add(f: int, kind: str, rank: int, at: int, value: float, quantile: float | None) -> None:
        for key, v in (("model_id", model_id), ("layer", f // d_mlp), ("idx", f % d_mlp), ("kind", kind),
                       ("rank", rank), ("row_idx", at // ctx), ("position", at % ctx), ("value", value),
                       ("quantile", quantile)):
            out[key].append(v)
    for f in range(post.shape[1]):
        fired = np.flatnonzero(post[:, f] > 0)
        fired = fired[np.argsort(post[fired, f], kind="stable")]
        for band in range(min(quantiles, fired.size)):
            i = int((band + 0.5) * fired.size / quantiles)
            add(f, "quantile", band + 1, int(fired[i]), float(post[fired[i], f]), (i + 0.5) / fired.size)
        for rank, at in enumerate(np.argsort(post[:, f], kind="stable")[:bottom], start=1):
            add(f, "bottom", rank, int(at), float(post[at, f]), None)
    return pl.DataFrame(out, schema_overrides={"quantile": pl.Float64})


def _window(post: np.ndarray, model_id: int, layer: int, idx: int, kind: str, rank: int, source_model_id: int,
            source_layer: int, source_idx: int, row: int, pos: int, d_mlp: int) -> dict:
    """One example's window of the source neuron's hook_post (post: [rows, ctx, neurons])."""
    start, stop = max(pos - WINDOW[0], 0), min(pos + WINDOW[1], post.shape[1] - 1)
    return {"model_id": model_id, "layer": layer, "idx": idx, "kind": kind, "rank": rank,
            "source_model_id": source_model_id, "source_layer": source_layer, "source_idx": source_idx,
            "row_idx": row, "position": pos, "start": start,
            "activations": [float(v) for v in post[row, start:stop + 1, source_layer * d_mlp + source_idx]]}


def _insert(conn, sql: str, **params) -> int:
    return int(conn.execute(sa.text(sql), params).scalar_one())


def build_synthetic_atlas(
    engine: Engine, *, n_layers: int = 2, d_mlp: int = 16, n_rows: int = 24, context_length: int = 16,
    top_k: int = 5, edges_k: int = 3, seed: int = 0, include_unfinished: bool = True,
) -> SyntheticAtlas:
    """Fill ``engine``'s (migrated, empty) database with the synthetic atlas; return what was planted."""
    rng = np.random.default_rng(seed)
    n_neurons = n_layers * d_mlp
    tokens = _tokens(rng, n_rows, context_length)

    with engine.begin() as conn:
        tok_id = _insert(conn, "INSERT INTO tokenizer (name, content_hash, vocab_size, bos_token_id, eos_token_id)"
                               " VALUES ('synthetic-bpe', 'synthetic-hash', :v, 0, 0) RETURNING id", v=len(VOCAB))
        raw = conn.connection.driver_connection
        copy_frame(raw, "vocab_token", pl.DataFrame({
            "tokenizer_id": [tok_id] * len(VOCAB), "token_id": list(range(len(VOCAB))), "text": VOCAB}))
        cohort_id = _insert(conn, "INSERT INTO cohort (name, tokenizer_id, description) VALUES (:n, :t, :d) RETURNING id",
                            n=COHORT, t=tok_id, d="three synthetic seeds with five planted features")
        model_ids = {}
        for i, name in enumerate(MODEL_NAMES):
            model_ids[name] = _insert(conn, """
                INSERT INTO model (name, source, revision, architecture, cohort_id, seed_label, n_layers, d_model,
                    d_mlp, n_heads, d_head, n_ctx, d_vocab, act_fn, tokenizer_id)
                VALUES (:n, :s, :r, 'GPT2LMHeadModel', :c, :seed, :L, 8, :d, 2, 4, :ctx, :v, 'gelu_new', :t)
                RETURNING id""", n=name, s=f"synthetic://{name}", r=f"rev-{i}", c=cohort_id, seed=name[-1],
                L=n_layers, d=d_mlp, ctx=context_length, v=len(VOCAB), t=tok_id)
            copy_frame(raw, "neuron", pl.DataFrame({
                "model_id": [model_ids[name]] * n_neurons,
                "layer": [f // d_mlp for f in range(n_neurons)], "idx": [f % d_mlp for f in range(n_neurons)]}))
        dataset_id = _insert(conn, """
            INSERT INTO dataset (name, source, tokenizer_id, context_length, n_rows, n_tokens, n_kept_tokens,
                filter_rule, content_hash, seed)
            VALUES (:n, 'synthetic grammar', :t, :ctx, :rows, :ntok, :kept, CAST(:rule AS jsonb), 'synthetic-data', :seed)
            RETURNING id""", n=DATASET, t=tok_id, ctx=context_length, rows=n_rows, ntok=n_rows * context_length,
                             kept=n_rows * (context_length - 1), seed=seed,
                             rule=json.dumps({"exclude_token_ids": [BOS], "description": "drop BOS"}))
        copy_frame(raw, "dataset_row", pl.DataFrame({
            "dataset_id": [dataset_id] * n_rows, "row_idx": list(range(n_rows)),
            "tokens": pl.Series(tokens.tolist(), dtype=pl.List(pl.Int32))}))

    # ------------------------------------------------------------ planted activations
    planted: dict[str, dict[str, tuple[int, int]]] = {f: {} for f in FEATURES}
    dead: dict[str, tuple[int, int]] = {}
    prediction: dict[str, tuple[int, int]] = {}
    pre: dict[str, np.ndarray] = {}
    for m, name in enumerate(MODEL_NAMES):
        slots = rng.permutation(n_neurons)
        if m == 0:  # the reference: fixed, documented places
            slots = np.array([3, 7, d_mlp + 2, d_mlp + 9, 12] + [f for f in range(n_neurons) if f not in
                             (3, 7, d_mlp + 2, d_mlp + 9, 12)])
        acts = rng.normal(0.0, 1.0, size=(n_rows, context_length, n_neurons)) * rng.uniform(2.0, 4.0, n_neurons) \
            + rng.uniform(-2.0, 0.5, n_neurons)
        for f, feature in enumerate(FEATURES):
            flat = int(slots[f])
            planted[feature][name] = (flat // d_mlp, flat % d_mlp)
            acts[:, :, flat] = _planted_signal(feature, tokens) + 0.25 * rng.normal(size=tokens.shape)
        dead_flat = int(slots[len(FEATURES)])
        acts[:, :, dead_flat] = -5.0
        dead[name] = (dead_flat // d_mlp, dead_flat % d_mlp)
        pred_flat = int(slots[len(FEATURES) + 1])
        prediction[name] = (pred_flat // d_mlp, pred_flat % d_mlp)
        pre[name] = acts
    post = {name: _gelu(a) for name, a in pre.items()}

    atlas = SyntheticAtlas(tok_id, cohort_id, dataset_id, model_ids, n_layers, d_mlp, planted, dead, prediction)
    layer_of = np.arange(n_neurons) // d_mlp
    idx_of = np.arange(n_neurons) % d_mlp

    # ------------------------------------------------------------ stats runs
    for name, model_id in model_ids.items():
        p, q = pre[name].reshape(-1, n_neurons), post[name].reshape(-1, n_neurons)
        stat_rows, hist = [], []
        for f in range(n_neurons):
            mean, var, skew, kurt = _moments(p[:, f])
            stat_rows.append((mean, var, skew, kurt, float(p[:, f].min()), float(p[:, f].max()),
                              float(q[:, f].mean()), float(q[:, f].max()), float((q[:, f] > 0).mean())))
            counts, _ = np.histogram(np.clip(p[:, f], HIST_EDGES[0], HIST_EDGES[-1]), bins=HIST_EDGES)
            hist.append(counts.astype(int).tolist())
        cols = list(zip(*stat_rows))
        stats = pl.DataFrame({
            "model_id": [model_id] * n_neurons, "layer": layer_of, "idx": idx_of, "count": [p.shape[0]] * n_neurons,
            "mean": cols[0], "variance": cols[1], "skew": cols[2], "kurtosis": cols[3], "pre_min": cols[4],
            "pre_max": cols[5], "post_mean": cols[6], "post_max": cols[7], "act_frequency": cols[8],
            "histogram": pl.Series(hist, dtype=pl.List(pl.Int64)),
        }, strict=False)
        ex = {"model_id": [], "layer": [], "idx": [], "rank": [], "row_idx": [], "position": [], "value": []}
        tok_rows = {"model_id": [], "layer": [], "idx": [], "token_id": [], "count": [], "mean_act": [], "max_act": []}
        flat_tokens = tokens.reshape(-1)
        for f in range(n_neurons):
            order = np.argsort(-q[:, f], kind="stable")[:top_k]
            for rank, at in enumerate(order, start=1):
                ex["model_id"].append(model_id); ex["layer"].append(int(layer_of[f])); ex["idx"].append(int(idx_of[f]))
                ex["rank"].append(rank); ex["row_idx"].append(int(at // context_length))
                ex["position"].append(int(at % context_length)); ex["value"].append(float(q[at, f]))
            per_token = []
            for t in np.unique(flat_tokens):
                vals = q[flat_tokens == t, f]
                per_token.append((float(vals.mean()), float(vals.max()), int(vals.size), int(t)))
            for mean_act, max_act, count, t in sorted(per_token, reverse=True)[:8]:
                tok_rows["model_id"].append(model_id); tok_rows["layer"].append(int(layer_of[f]))
                tok_rows["idx"].append(int(idx_of[f])); tok_rows["token_id"].append(t); tok_rows["count"].append(count)
                tok_rows["mean_act"].append(mean_act); tok_rows["max_act"].append(max_act)
        run = begin_run(engine, "stats", model_id=model_id, dataset_id=dataset_id, device="cpu",
                        params={"histogram_edges": HIST_EDGES, "top_k": top_k, "n_token_activations": 8},
                        tokens_total=int(p.shape[0]))
        with run:
            run.progress(int(p.shape[0]))
            run.publish({"activation_stats": stats, "top_example": pl.DataFrame(ex),
                         "token_activation": pl.DataFrame(tok_rows),
                         "sampled_example": _sampled_examples(q, model_id, d_mlp, context_length)})
        atlas.run_ids[f"stats:{name}"] = run.id

    # ------------------------------------------------------------ weights runs
    for name, model_id in model_ids.items():
        rows = []
        for f in range(n_neurons):
            z = rng.normal(0.0, 1.0, len(VOCAB))
            if (int(layer_of[f]), int(idx_of[f])) == prediction[name]:
                z[[THE, VOCAB.index(" cat"), VOCAB.index(" dog")]] += 12.0  # boosts a small token set
            order = np.argsort(-z)
            zc = (z - z.mean()) / z.std()
            w_in, w_out = float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.5, 2.0))
            rows.append({
                "model_id": model_id, "layer": int(layer_of[f]), "idx": int(idx_of[f]), "w_in_norm": w_in,
                "w_out_norm": w_out, "input_bias": float(rng.normal(-0.5, 0.3)), "in_out_sim": float(rng.uniform(-0.3, 0.3)),
                "l2_penalty": w_in**2 + w_out**2, "vocab_mean": float(z.mean() * 0.01), "vocab_var": float(z.var() * 1e-3),
                "vocab_skew": float((zc**3).mean()), "vocab_kurtosis": float((zc**4).mean()),
                "top_token_ids": [int(t) for t in order[:20]], "top_token_values": [float(z[t]) for t in order[:20]],
                "bottom_token_ids": [int(t) for t in order[::-1][:20]],
                "bottom_token_values": [float(z[t]) for t in order[::-1][:20]],
            })
        frame = pl.DataFrame(rows, schema_overrides={"top_token_ids": pl.List(pl.Int64), "bottom_token_ids": pl.List(pl.Int64)})
        run = begin_run(engine, "weights", model_id=model_id, device="cpu", params={"processing": "fold_ln,center"})
        with run:
            run.publish({"weight_stats": frame})
        atlas.run_ids[f"weights:{name}"] = run.id

    # ------------------------------------------------------------ correlation run (reference = synth-a)
    keep = np.ones((n_rows, context_length), dtype=bool)
    keep[:, 0] = False  # the filter rule: drop BOS
    ref = MODEL_NAMES[0]
    ra = post[ref][keep]
    pair, edges, maxes, baselines = [], [], [], []
    for partner in MODEL_NAMES[1:]:
        pb = post[partner][keep]
        rho = _corr(ra, pb)
        rotated = np.concatenate([
            pb[:, l * d_mlp:(l + 1) * d_mlp] @ np.linalg.qr(rng.normal(size=(d_mlp, d_mlp)))[0].T
            for l in range(n_layers)], axis=1)
        rho_base = _corr(ra, rotated)
        best, arg = _nanmax_arg(rho, 1)
        base, _ = _nanmax_arg(rho_base, 1)
        col_best, col_arg = _nanmax_arg(rho, 0)
        col_base, _ = _nanmax_arg(rho_base, 0)
        maxes.append(best)
        baselines.append(base)
        for side, (vals, args, bvals, owner, other) in {
            "ref": (best, arg, base, model_ids[ref], model_ids[partner]),
            "partner": (col_best, col_arg, col_base, model_ids[partner], model_ids[ref]),
        }.items():
            for f in range(n_neurons):
                ok = not np.isnan(vals[f])
                pair.append({"model_id": owner, "layer": int(layer_of[f]), "idx": int(idx_of[f]), "other_model_id": other,
                             "max_corr": float(vals[f]) if ok else None,
                             "best_layer": int(args[f] // d_mlp) if ok else None,
                             "best_idx": int(args[f] % d_mlp) if ok else None,
                             "baseline_max": float(bvals[f]) if not np.isnan(bvals[f]) else None})
        for f in range(n_neurons):
            if np.isnan(best[f]):
                continue
            order = np.argsort(-np.nan_to_num(rho[f], nan=-np.inf))[:edges_k]
            for rank, j in enumerate(order, start=1):
                edges.append({"model_id": model_ids[ref], "layer": int(layer_of[f]), "idx": int(idx_of[f]),
                              "partner_model_id": model_ids[partner], "rank": rank, "partner_layer": int(j // d_mlp),
                              "partner_idx": int(j % d_mlp), "rho": float(rho[f, j])})
    maxes_a, base_a = np.vstack(maxes), np.vstack(baselines)
    universality = []
    for f in range(n_neurons):
        dead_ref = np.isnan(maxes_a[:, f]).any()
        mean_corr = None if dead_ref else float(maxes_a[:, f].mean())
        mean_base = None if dead_ref else float(base_a[:, f].mean())
        universality.append({
            "model_id": model_ids[ref], "layer": int(layer_of[f]), "idx": int(idx_of[f]), "n_partners": len(maxes),
            "max_corr": None if dead_ref else float(maxes_a[:, f].max()), "mean_corr": mean_corr,
            "min_corr": None if dead_ref else float(maxes_a[:, f].min()), "mean_baseline": mean_base,
            "excess": None if dead_ref else mean_corr - mean_base})
    float_cols = {c: pl.Float64 for c in ("max_corr", "baseline_max", "mean_corr", "min_corr", "mean_baseline", "excess")}
    run = begin_run(engine, "correlation", model_id=model_ids[ref], cohort_id=cohort_id, dataset_id=dataset_id,
                    device="cpu", params={"rotation": "orthogonal", "rotation_seed": seed, "top_k": edges_k},
                    tokens_total=int(keep.sum()))
    with run:
        run.progress(int(keep.sum()))
        run.publish({
            "pair_correlation": pl.DataFrame(pair, schema_overrides={k: v for k, v in float_cols.items()
                                                                     if k in ("max_corr", "baseline_max")}
                                             | {"best_layer": pl.Int64, "best_idx": pl.Int64}),
            "correlation_edge": pl.DataFrame(edges),
            "neuron_universality": pl.DataFrame(universality, schema_overrides={
                k: v for k, v in float_cols.items() if k not in ("baseline_max",)}),
        })
    atlas.run_ids["correlation"] = run.id

    # ------------------------------------------------------------ examples run (windows of every example)
    windows = []
    for name, model_id in model_ids.items():
        for kind, table in (("top", "top_example"), ("quantile", "sampled_example"), ("bottom", "sampled_example")):
            with engine.connect() as conn:
                rows = conn.execute(sa.text(
                    f"SELECT layer, idx, rank, row_idx, position FROM {table} WHERE model_id = :m"
                    + (" AND kind = :k" if table == "sampled_example" else "")), {"m": model_id, "k": kind}).all()
            for layer, idx, rank, row, pos in rows:
                windows.append(_window(post[name], model_id, layer, idx, kind, rank, model_id, layer, idx, row, pos,
                                       d_mlp))
    with engine.connect() as conn:
        ref_top = conn.execute(sa.text("SELECT layer, idx, rank, row_idx, position FROM top_example "
                                       "WHERE model_id = :m AND rank <= 3"), {"m": model_ids[ref]}).all()
    best = {(r["layer"], r["idx"], r["other_model_id"]): (r["best_layer"], r["best_idx"]) for r in pair
            if r["model_id"] == model_ids[ref] and r["best_layer"] is not None}
    for layer, idx, rank, row, pos in ref_top:
        for partner in MODEL_NAMES[1:]:
            found = best.get((layer, idx, model_ids[partner]))
            if found is not None:
                windows.append(_window(post[partner], model_ids[ref], layer, idx, "top", rank, model_ids[partner],
                                       found[0], found[1], row, pos, d_mlp))
    run = begin_run(engine, "examples", model_id=model_ids[ref], cohort_id=cohort_id, dataset_id=dataset_id,
                    device="cpu", params={"window_before": WINDOW[0], "window_after": WINDOW[1], "partner_examples": 3})
    with run:
        run.publish({"example_activation": pl.DataFrame(windows, schema_overrides={
            "activations": pl.List(pl.Float32)})})
    atlas.run_ids["examples"] = run.id

    # ------------------------------------------------------------ classify run (cohort level)
    candidates = _candidate_features(tokens)
    label_of = {"the": ("unigram", "token=' the'"), "newline": ("unigram", "is_newline"),
                "prev_the": ("previous_token", "previous token=' the'"), "position": ("position", "position>=8"),
                "punct": ("unigram", "is_punctuation")}
    feats, labels = [], []
    for name, model_id in model_ids.items():
        for f in range(n_neurons):
            act = post[name][:, :, f]
            scored = sorted(((_variance_reduction(act, mask), feat, kind, prev)
                             for feat, (kind, prev, mask) in candidates.items()), reverse=True)[:3]
            for rank, (vr, feat, kind, prev) in enumerate(scored, start=1):
                feats.append({"model_id": model_id, "layer": int(layer_of[f]), "idx": int(idx_of[f]), "rank": rank,
                              "feature": feat, "feature_kind": kind, "on_previous": prev, "variance_reduction": vr})
        for feature, (label, feat) in label_of.items():
            layer, idx = planted[feature][name]
            kind, prev, mask = candidates[feat]
            vr = _variance_reduction(post[name][:, :, layer * d_mlp + idx], mask)
            labels.append({"model_id": model_id, "layer": layer, "idx": idx, "label": label, "score": vr,
                           "evidence": json.dumps({"feature": feat, "variance_reduction": round(vr, 4),
                                                   "on_previous": prev, "threshold": 0.5})})
        layer, idx = prediction[name]
        labels.append({"model_id": model_id, "layer": layer, "idx": idx, "label": "prediction", "score": 12.5,
                       "evidence": json.dumps({"vocab_kurtosis": 12.5, "vocab_skew": 3.1, "boosts": [" the", " cat", " dog"]})})

    def write_classify(conn) -> None:
        copy_frame(conn, "neuron_feature", pl.DataFrame(feats).with_columns(pl.lit(classify.id).alias("run_id")))
        copy_frame(conn, "neuron_label", pl.DataFrame(labels).with_columns(pl.lit(classify.id).alias("run_id")))
        with conn.cursor() as cur:
            for feature, (label, feat) in label_of.items():
                members = [(model_ids[n], *planted[feature][n]) for n in MODEL_NAMES]
                cur.execute(
                    "INSERT INTO family (run_id, label, name, n_members, n_models, evidence) VALUES (%s, %s, %s, %s, %s, %s)"
                    " RETURNING id", (classify.id, label, f"{label}: {feat}", len(members), len(members),
                                      json.dumps({"feature": feat, "every_seed": True})))
                fam = cur.fetchone()[0]
                copy_frame(conn, "family_member", pl.DataFrame(
                    {"family_id": [fam] * len(members), "model_id": [m[0] for m in members],
                     "layer": [m[1] for m in members], "idx": [m[2] for m in members],
                     "score": [0.9] * len(members)}))

    counts = {label: 0 for label in ("unigram", "alphabet", "previous_token", "position", "prediction", "suppression")}
    for row in labels:
        counts[row["label"]] += 1
    classify = begin_run(engine, "classify", cohort_id=cohort_id, dataset_id=dataset_id, device="cpu",
                         params={"thresholds": "paper", "result": {"label_counts": counts,
                                                                    "counted_among": "all neurons"}})
    with classify:
        classify.publish(write_classify)
    atlas.run_ids["classify"] = classify.id

    if include_unfinished:
        running = begin_run(engine, "stats", model_id=model_ids[MODEL_NAMES[1]], dataset_id=dataset_id, device="cpu",
                            params={"histogram_edges": HIST_EDGES, "top_k": 20, "note": "still running"},
                            tokens_total=1000)
        running.progress(300)
        running.close()  # stays 'running' (as if its worker were still at it)
        atlas.run_ids["running"] = running.id
        failed = begin_run(engine, "weights", model_id=model_ids[MODEL_NAMES[2]], device="cpu", params={"note": "fails"})
        failed.fail("CUDA out of memory — rerun with a smaller --batch-size")
        atlas.run_ids["failed"] = failed.id
    return atlas
