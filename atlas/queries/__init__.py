"""The query layer: questions about the atlas, answered as polars DataFrames.

Every function takes an engine first and returns a ``polars.DataFrame`` (exceptions:
:func:`neuron_page` returns a dict of frames, :func:`status_report` text). Filters are bound
parameters, never pasted into SQL. A model is named by its ``name`` (what neuron URLs carry) or
its integer id. Results come from the *current* runs: the newest done run of each subject (view
``latest_run``), so a rerun replaces what you see; queries that read one run kind take
``run_id=`` to read an older run instead.

    >>> from atlas import queries as q
    >>> q.universal_neurons(engine, threshold=0.5, cohort="synth").head(3)   # doctest: +SKIP
    >>> q.neuron(engine, "synth-a", 0, 3).row(0, named=True)["excess"]       # doctest: +SKIP

Modules, one concept each: ``catalog`` (models, cohorts, datasets, runs), ``one_neuron`` (one neuron
and its page), ``examples`` (a neuron's examples as text, its partners' activations on them),
``universality`` (universal neurons, per-layer figures), ``properties`` (universal vs other neurons,
within-layer percentiles), ``family_labels`` (families and labels, family counts), ``tokens``
(search by token), ``training`` (universality over training checkpoints), ``report`` (``atlas status``); ``_sql`` holds what they share (connections, the
scope filter, the run choice). The SQL views they build on are defined in
atlas/views.py. ``docs/queries.md`` shows every question with its Python call and the SQL to paste
into psql; tests run those examples against a real database.
"""

from atlas.queries._sql import EMPTY_HINT, ModelRef, connect, frame, model_id
from atlas.queries.catalog import RunStatus, cohorts, data_version, datasets, is_empty, models, runs
from atlas.queries.examples import partner_examples, sampled_examples, top_examples
from atlas.queries.family_labels import (
    families,
    family_counts,
    family_layer_counts,
    family_members,
    label_counts,
    label_names,
)
from atlas.queries.one_neuron import (
    best_partners,
    features,
    histogram,
    labels,
    neuron,
    neuron_families,
    neuron_page,
    partner_edges,
    token_activations,
    vocab_effects,
)
from atlas.queries.properties import PAPER_PROPERTIES, property_percentiles, universal_properties
from atlas.queries.pipeline import queue_jobs
from atlas.queries.report import status_report
from atlas.queries.training import checkpoint_models, neuron_over_training, universality_over_training
from atlas.queries.tokens import TokenMatch, neurons_for_token, search_tokens
from atlas.queries.universality import (
    UNIVERSAL_ORDER,
    correlation_distribution,
    correlation_scatter,
    layer_summary,
    layer_universality,
    universal_neurons,
    universality_summary,
)

__all__ = [
    "EMPTY_HINT", "ModelRef", "PAPER_PROPERTIES", "RunStatus", "TokenMatch", "UNIVERSAL_ORDER",
    "connect", "frame", "model_id",
    "cohorts", "data_version", "datasets", "is_empty", "models", "queue_jobs", "runs",
    "best_partners", "features", "histogram", "labels", "neuron", "neuron_families", "neuron_page", "partner_edges",
    "token_activations", "vocab_effects",
    "partner_examples", "sampled_examples", "top_examples",
    "correlation_distribution", "correlation_scatter", "layer_summary", "layer_universality", "universal_neurons",
    "universality_summary", "property_percentiles", "universal_properties",
    "families", "family_counts", "family_layer_counts", "family_members", "label_counts", "label_names",
    "neurons_for_token", "search_tokens",
    "status_report", "checkpoint_models", "neuron_over_training", "universality_over_training",
]
