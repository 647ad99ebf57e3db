"""The SQL that ingestion speaks: ``reads`` (datasets, model records, earlier results) and
``writes`` (registration, datasets, result writers for ``RunHandle.publish``). No other ingest
module talks to the database."""

from atlas.ingest.store.reads import (
    DatasetInfo, ModelRecord, checkpoint_at, cohort_id, cohort_models, correlations_read, dataset_exists, dataset_names,
    finished_runs, get_dataset, iter_dataset_batches, load_dataset_rows, model_id_by_name, models_by_name, partner_edges, resolve_dataset,
    run_subject, special_token_ids, step_cohorts, universal_neurons, vocabulary,
)
from atlas.ingest.store.writes import register_model, register_tokenizer, store_dataset, vocab_texts

__all__ = [
    "DatasetInfo", "ModelRecord", "checkpoint_at", "cohort_id", "cohort_models", "correlations_read", "dataset_exists", "dataset_names", "finished_runs",
    "get_dataset", "iter_dataset_batches", "load_dataset_rows", "model_id_by_name", "models_by_name",
    "partner_edges", "register_model", "register_tokenizer", "resolve_dataset", "run_subject", "special_token_ids",
    "step_cohorts", "store_dataset", "universal_neurons", "vocab_texts", "vocabulary",
]
