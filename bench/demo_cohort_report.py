"""What the demo atlas shows, next to the paper: run after `make demo` (or `atlas demo`).

Reads the atlas through the query layer (no recomputation) and writes
``bench/results/demo_cohort.json``: the reference model's universal share overall and per layer at
the paper's threshold (0.5), for the run's baseline; the median mean_corr / baseline of the
universal neurons; their median within-layer percentiles of kurtosis, skew, firing rate, input
bias and weight norm (the paper: ≈ 93, 94, 23, 18, 83 in GPT2-small); how many carry each family
label; and the universal share per layer at each training checkpoint.

    .venv/bin/python -m bench.demo_cohort_report
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl

RESULTS = Path(__file__).parent / "results" / "demo_cohort.json"
PAPER = {"GPT2-small-a": 4.16, "GPT2-medium-a": 1.23, "Pythia-160m": 1.26}


def report(engine, cohort: str = "demo", threshold: float = 0.5) -> dict:
    from atlas import queries, queries_training

    checkpoints = set(queries_training.checkpoint_models(engine))
    layers = queries.layer_universality(engine, threshold=threshold, cohort=cohort)
    layers = layers.filter(~pl.col("model").is_in(checkpoints))
    if layers.is_empty():
        raise SystemExit(f"no correlation run for cohort {cohort} — run `make demo` first")
    reference = layers["model"][0]
    universal = queries.universal_neurons(engine, threshold=threshold, model=reference)
    rotation = queries.frame(engine, "SELECT r.params->>'rotation' AS rotation FROM latest_run r JOIN model m "
                                     "ON m.id = r.model_id WHERE r.kind = 'correlation' AND m.name = :m",
                             {"m": reference})["rotation"].to_list()
    props = queries.universal_properties(engine, model=reference, threshold=threshold)
    labels: dict[str, int] = {}
    for row in universal["labels"].to_list() if universal.height else []:
        for label in set(row or []):
            labels[label] = labels.get(label, 0) + 1
    n_neurons, n_universal = int(layers["n_neurons"].sum()), int(layers["n_universal"].sum())
    over = queries_training.universality_over_training(engine, cohort=cohort, threshold=threshold)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cohort": cohort, "reference": reference, "threshold": threshold,
        "rotation": rotation[0] if rotation else None,
        "n_neurons": n_neurons, "n_universal": n_universal, "universal_percent": round(100 * n_universal / n_neurons, 2),
        "per_layer_percent": [round(100 * x, 2) for x in layers.sort("layer")["universal_share"].to_list()],
        "universal_median_mean_corr": _median(universal, "mean_corr"),
        "universal_median_baseline": _median(universal, "mean_baseline"),
        "universal_median_act_frequency": _median(universal, "act_frequency"),
        "universal_median_kurtosis": _median(universal, "kurtosis"),
        "within_layer_percentiles": {r["property"]: {"universal": _round(r["universal_median_pct"]),
                                                     "other": _round(r["other_median_pct"])}
                                     for r in props.iter_rows(named=True)},
        "labels_of_universal_neurons": dict(sorted(labels.items(), key=lambda kv: -kv[1])),
        "over_training": [{"step": r["step"], "train_tokens": r["train_tokens"], "layer": r["layer"],
                           "n_partners": r["n_partners"], "percent": round(100 * r["universal_share"], 2)}
                          for r in over.filter(pl.col("trained_model") == reference).iter_rows(named=True)],
        "paper_percent": PAPER,
    }


def _median(frame: pl.DataFrame, column: str) -> float | None:
    if frame.is_empty() or column not in frame.columns:
        return None
    return _round(frame[column].drop_nulls().median())


def _round(x) -> float | None:
    return None if x is None else round(float(x), 3)


def main() -> int:
    from atlas import db

    result = report(db.connect())
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
