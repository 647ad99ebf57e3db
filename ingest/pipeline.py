"""The steps a queued job runs (app/queue.py): thin adapters from manifest steps to the ingest API."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine


def build_dataset_step(engine: Engine, *, name: str, tokenizer_source: str, inputs: list[str],
                       hf_dataset: str | None, context_length: int, max_tokens: int | None) -> Any:
    from atlas.ingest.datasets import build_dataset

    return build_dataset(engine, name, tokenizer_source=tokenizer_source, inputs=inputs, hf_dataset=hf_dataset,
                         context_length=context_length, max_tokens=max_tokens)


def ingest_model_step(engine: Engine, *, source: str, name: str, cohort: str, seed_label: str | None,
                      dataset: str) -> Any:
    from atlas.ingest.runs.stats import ingest_model

    return ingest_model(engine, source, dataset=dataset, name=name, cohort=cohort, seed_label=seed_label)


def correlate_cohort_step(engine: Engine, *, cohort: str, dataset: str, reference: str | None) -> Any:
    from atlas.ingest.runs.correlate import correlate_cohort

    return correlate_cohort(engine, cohort, dataset, reference)


def classify_cohort_step(engine: Engine, *, cohort: str, dataset: str) -> Any:
    from atlas.ingest.runs.classify import classify

    return classify(engine, dataset, cohort=cohort)
