"""What the demo atlas shows, next to the paper: run after `make demo` (or `atlas demo`).

Reads the atlas through the query layer and writes ``bench/results/demo_cohort.{json,md}``: the
reference model's universal share overall and per layer at the paper's threshold (0.5), for the
pipeline's baseline (the atlas default, Haar orthogonal rotations), and — recomputed on the same
demo dataset rows with the recipe benchmark's engine (``bench.demo_recipes.measure_cohort``) — for
the paper's baseline (iid Gaussian unit rows); the median mean_corr / baseline of the
universal neurons; their median within-layer percentiles of kurtosis, skew, firing rate, input
bias and weight norm (the paper: ≈ 93, 94, 23, 18, 83 in GPT2-small); how many carry each family
label; and the universal share per layer at each training checkpoint.

    .venv/bin/python -m bench.demo_cohort_report            # add --no-paper-baseline to skip the recomputation
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl

RESULTS = Path(__file__).parent / "results" / "demo_cohort.json"
PAPER = {"GPT2-small-a": 4.16, "GPT2-medium-a": 1.23, "Pythia-160m": 1.26}


def report(engine, cohort: str = "demo", threshold: float = 0.5) -> dict:
    from atlas import queries

    checkpoints = set(queries.checkpoint_models(engine))
    layers = queries.layer_universality(engine, threshold=threshold, cohort=cohort)
    layers = layers.filter(~pl.col("model").is_in(checkpoints))
    if layers.is_empty():
        raise SystemExit(f"no correlation run for cohort {cohort} — run `make demo` first")
    reference = layers["model"][0]
    universal = queries.universal_neurons(engine, threshold=threshold, model=reference)
    rotation = queries.frame(engine, "SELECT r.params->>'rotation' AS rotation FROM latest_run r JOIN model m "
                                     "ON m.id = r.model_id WHERE r.kind = 'correlation' AND m.name = :m",
                             {"m": reference})["rotation"].to_list()
    props = queries.universal_properties(engine, model=reference, threshold=threshold, by_layer=False)
    pct = {(r["property"], r["group"]): r["median"] for r in props.iter_rows(named=True)}
    labels: dict[str, int] = {}
    for row in universal["labels"].to_list() if universal.height else []:
        for label in set(row or []):
            labels[label] = labels.get(label, 0) + 1
    n_neurons, n_universal = int(layers["n_neurons"].sum()), int(layers["n_universal"].sum())
    over = queries.universality_over_training(engine, cohort=cohort, threshold=threshold)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cohort": cohort, "reference": reference, "threshold": threshold,
        "rotation": rotation[0] if rotation else None,
        "n_neurons": n_neurons, "n_universal": n_universal, "universal_percent": round(100 * n_universal / n_neurons, 2),
        "per_layer_percent": [round(100 * x, 2) for x in layers.sort("layer")["universal_share"].to_list()],
        "universal_median_mean_corr": _median(universal, "mean_corr"),
        "universal_median_baseline": _median(universal, "mean_baseline"),
        "universal_median_act_frequency": _median(universal, "act_frequency"),
        "universal_median_kurtosis": _median(universal, "kurtosis"),
        "within_layer_percentiles": {prop: {"universal": _round(pct.get((prop, "universal"))),
                                            "other": _round(pct.get((prop, "other")))}
                                     for prop in dict.fromkeys(props["property"].to_list())},
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


def paper_baseline(engine, dataset: str = "demo", cohort: str = "demo") -> dict:
    """The shipped cohort's final models (and each shipped step) correlated with the paper's baseline
    on the rows of the atlas's ``dataset``: ``bench.demo_recipes.measure_cohort`` per step."""
    from atlas import queries
    from atlas.ingest.store import load_dataset_rows, resolve_dataset
    from bench.demo_recipes import measure_cohort

    info = resolve_dataset(engine, dataset)
    rows = load_dataset_rows(engine, info)
    models = queries.models(engine)
    out = {}
    for name in sorted(set(models["cohort"].drop_nulls().to_list())):
        if name != cohort and not name.startswith(f"{cohort}@step"):
            continue
        sources = queries.frame(engine, "SELECT m.source, m.step FROM model m JOIN cohort c ON c.id = m.cohort_id "
                                        "WHERE c.name = :c ORDER BY m.seed_label", {"c": name})
        measured = measure_cohort([Path(s) for s in sources["source"]], rows, info.filter_rule)
        out[name] = {"step": int(sources["step"][0]), "n_seeds": sources.height,
                     **{k: measured[k] for k in ("baseline_median", "baseline_median_orthogonal", "excess_quantiles",
                                                 "excess_max", "share_gt_0.5", "share_gt_0.5_orthogonal",
                                                 "share_gt_0.5_per_layer", "share_gt_0.3", "signature")}}
    return out


def markdown(result: dict) -> str:
    """The report as the table bench/results/demo_cohort.md shows."""
    lines = [f"# What the demo atlas shows ({result['date']})", "",
             f"Reference model {result['reference']} of cohort {result['cohort']}, threshold excess > "
             f"{result['threshold']}.", "",
             "| baseline | universal | per layer | source |", "| --- | --- | --- | --- |",
             f"| atlas pipeline ({result['rotation']}) | {result['universal_percent']:.2f} % ({result['n_universal']} of "
             f"{result['n_neurons']}) | {' / '.join(f'{x:.2f} %' for x in result['per_layer_percent'])} | "
             "`atlas demo` run, layer_universality |"]
    for name, m in (result.get("paper_baseline") or {}).items():
        lines.append(f"| paper (gaussian_unit_rows), {name}, step {m['step']}, {m['n_seeds']} seeds | "
                     f"{100 * m['share_gt_0.5']:.2f} % (orthogonal {100 * m['share_gt_0.5_orthogonal']:.2f} %) | "
                     f"{' / '.join(f'{100 * x:.2f} %' for x in m['share_gt_0.5_per_layer'])} | measure_cohort |")
    lines += ["", "Paper (GPT2-small-a, medium-a, Pythia-160m): "
              + ", ".join(f"{k} {v} %" for k, v in result["paper_percent"].items()), "",
              f"Universal neurons (pipeline): median act_frequency {result['universal_median_act_frequency']}, median "
              f"kurtosis {result['universal_median_kurtosis']}, median mean_corr {result['universal_median_mean_corr']}, "
              f"median baseline {result['universal_median_baseline']}.", "",
              "Median within-layer percentile, universal vs other: " + "; ".join(
                  f"{k} {v['universal']} vs {v['other']}" for k, v in result["within_layer_percentiles"].items()), "",
              "Labels of the universal neurons: " + (", ".join(f"{k} {v}" for k, v in
                                                            result["labels_of_universal_neurons"].items()) or "none"),
              "", "Over training (pipeline baseline, reference seed): " + "; ".join(
                  f"step {r['step']} layer {r['layer']}: {r['percent']:.2f} % ({r['n_partners']} partners)"
                  for r in result["over_training"]), ""]
    if result.get("demo_seconds"):
        lines.append(f"`atlas demo` from a fresh ATLAS_HOME: {result['demo_seconds']:.0f} s on this machine.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from atlas import db

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-paper-baseline", action="store_true")
    parser.add_argument("--demo-seconds", type=float, default=None, help="measured `atlas demo` wall time to record")
    args = parser.parse_args(argv)
    engine = db.connect()
    result = report(engine)
    if not args.no_paper_baseline:
        result["paper_baseline"] = paper_baseline(engine)
    result["demo_seconds"] = args.demo_seconds
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
