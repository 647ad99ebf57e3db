"""Duplicate families (pure: polars frames in, polars frames out).

:func:`build_families` groups labelled neurons that share a label and its family key: within a
model directly, across seeds through the cross-seed partner edges (connected components)."""

from __future__ import annotations

import json

import polars as pl

from atlas.ingest.math.labels import json_safe

_FAMILY_SCHEMA = {"family": pl.Int64, "label": pl.Utf8, "name": pl.Utf8, "n_members": pl.Int64,
                  "n_models": pl.Int64, "evidence": pl.Utf8}
_MEMBER_SCHEMA = {"family": pl.Int64, "model_id": pl.Int64, "layer": pl.Int64, "idx": pl.Int64, "score": pl.Float64}


def build_families(labels: pl.DataFrame, edges: pl.DataFrame | None = None, *, min_rho: float = 0.5,
                   min_members: int = 2, n_models_total: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Group labelled neurons into duplicate families.

    ``labels``: ``model_id, layer, idx, label, family_key, score`` (from :func:`label_neurons`).
    ``edges``: cross-seed partner edges ``model_id, layer, idx, partner_model_id, partner_layer,
    partner_idx, rho`` (may be None or empty: then families are within a model only).

    Two labelled neurons are linked when they carry the same label and family key and either sit
    in the same model or are joined by a partner edge with rho ≥ ``min_rho``; a family is a
    connected component with at least ``min_members`` members. Returns (families, members):
    ``family, label, name, n_members, n_models, evidence`` and ``family, model_id, layer, idx, score``
    (``family`` is a 0-based local id)."""
    if labels.height == 0:
        return pl.DataFrame(schema=_FAMILY_SCHEMA), pl.DataFrame(schema=_MEMBER_SCHEMA)
    nodes = (labels.select("model_id", "layer", "idx", "label", "family_key", "score")
             .with_columns(pl.col("family_key").fill_null(""))
             .unique(subset=["model_id", "layer", "idx", "label", "family_key"], keep="first", maintain_order=True)
             .with_row_index("node"))
    parent = list(range(nodes.height))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for group in nodes.group_by(["model_id", "label", "family_key"], maintain_order=True).agg(pl.col("node")).iter_rows(named=True):
        members = group["node"]
        for other in members[1:]:
            union(members[0], other)

    edge_stats: dict[int, list[float]] = {}
    if edges is not None and edges.height:
        e = edges.filter(pl.col("rho") >= min_rho).select(
            pl.col("model_id"), pl.col("layer").cast(pl.Int64), pl.col("idx").cast(pl.Int64),
            pl.col("partner_model_id"), pl.col("partner_layer").cast(pl.Int64), pl.col("partner_idx").cast(pl.Int64),
            pl.col("rho").cast(pl.Float64))
        n = nodes.with_columns(pl.col("layer").cast(pl.Int64), pl.col("idx").cast(pl.Int64))
        ref = n.join(e, on=["model_id", "layer", "idx"], how="inner")
        linked = ref.join(
            n.rename({"model_id": "partner_model_id", "layer": "partner_layer", "idx": "partner_idx", "node": "partner_node",
                      "score": "partner_score"}),
            on=["partner_model_id", "partner_layer", "partner_idx", "label", "family_key"], how="inner")
        for a, b, rho in linked.select("node", "partner_node", "rho").iter_rows():
            union(a, b)
            edge_stats.setdefault(a, []).append(rho)

    nodes = nodes.with_columns(pl.Series("root", [find(i) for i in range(nodes.height)]))
    rhos_by_root: dict[int, list[float]] = {}
    for node, rhos in edge_stats.items():
        rhos_by_root.setdefault(find(node), []).extend(rhos)

    comps = (nodes.group_by("root").agg(
        pl.col("label").first(), pl.col("family_key").first(), pl.len().alias("n_members"),
        pl.col("model_id").n_unique().alias("n_models"), pl.col("model_id").unique().sort().alias("models"),
        pl.col("layer").unique().sort().alias("layers"),
        pl.struct("model_id", "layer", "idx").min().alias("first"))
        .filter(pl.col("n_members") >= min_members)
        .sort(["label", "family_key", "first"]))
    families = []
    for fam, c in enumerate(comps.iter_rows(named=True)):
        key = c["family_key"] or None
        rhos = rhos_by_root.get(c["root"], [])
        evidence = {"family_key": key, "models": c["models"], "layers": c["layers"],
                    "n_cross_seed_edges": len(rhos), "mean_edge_rho": (sum(rhos) / len(rhos)) if rhos else None,
                    "min_rho": min_rho}
        if n_models_total is not None:
            evidence["every_seed"] = c["n_models"] == n_models_total
            evidence["n_models_total"] = n_models_total
        families.append({"family": fam, "label": c["label"], "name": f"{c['label']}: {key}" if key else c["label"],
                         "n_members": c["n_members"], "n_models": c["n_models"],
                         "evidence": json.dumps(json_safe(evidence), sort_keys=True)})
    fam_of_root = pl.DataFrame({"root": comps["root"], "family": range(comps.height)},
                               schema={"root": nodes.schema["root"], "family": pl.Int64})
    members = (nodes.join(fam_of_root, on="root", how="inner")
               .select("family", "model_id", "layer", "idx", "score")
               .cast(_MEMBER_SCHEMA).sort(["family", "model_id", "layer", "idx"]))
    return pl.DataFrame(families, schema=_FAMILY_SCHEMA), members
