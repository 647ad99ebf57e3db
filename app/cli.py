"""The ``atlas`` command.

Every command prints a one-line error and exits non-zero when something is wrong (``--debug``
shows the traceback). Commands that compute import ``ingest`` inside the command, so the core
stays free of torch.
"""

from __future__ import annotations

import sys

import click

from atlas.errors import AtlasError


class AtlasGroup(click.Group):
    """Turns AtlasError (and a few common failures) into one line on stderr."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AtlasError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted — rerun the same command to resume", fg="yellow", err=True)
            sys.exit(130)


@click.group(cls=AtlasGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Neuron Atlas: which MLP neurons does every training seed learn, and what do they do?

    \b
    Configuration (environment):
      ATLAS_DATABASE_URL  PostgreSQL URL; unset = embedded PostgreSQL under ATLAS_HOME
      ATLAS_HOME          data home (embedded database, demo models, corpora, checkpoints);
                          default ./.atlas
    \b
    Typical session:
      atlas db upgrade            create or migrate the schema
      atlas zoo train             train the demo seed cohort (cached)
      atlas dataset build ...     tokenise a corpus into context rows
      atlas ingest ...            per-neuron statistics of a model over a dataset
      atlas correlate ...         cross-seed correlations and universality
      atlas status                what is in the atlas
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ---------------------------------------------------------------- db

@main.group()
def db() -> None:
    """Manage the database: start/stop the embedded server, apply migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target migration.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the atlas schema (safe to run repeatedly and concurrently)."""
    from atlas import db as dbm

    engine = dbm.get_engine()
    before = dbm.current_revision(engine)
    dbm.upgrade(engine, revision)
    after = dbm.current_revision(engine)
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("status")
def db_status() -> None:
    """Show which server is used, its version and the schema's migration state."""
    from atlas import db as dbm
    from atlas.settings import get_settings, redact

    settings = get_settings()
    engine = dbm.get_engine()
    major = dbm.check_connection(engine)
    current, head = dbm.current_revision(engine), dbm.head_revision()
    where = f"embedded, data in {settings.pgdata}" if settings.embedded else "ATLAS_DATABASE_URL"
    click.echo(f"server:    PostgreSQL {major} ({where})")
    click.echo(f"url:       {redact(engine.url.render_as_string(hide_password=False))}")
    state = "up to date" if current == head else "BEHIND — run `atlas db upgrade`"
    click.echo(f"migration: {current or 'none'} (head {head}, {state})")


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (no-op when it runs, or when ATLAS_DATABASE_URL is set)."""
    from atlas import db as dbm
    from atlas.settings import get_settings, redact

    settings = get_settings()
    url = dbm.resolve_url(settings)
    click.echo(f"database ready at {redact(url)}")


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (its data stays under ATLAS_HOME)."""
    from atlas import embedded
    from atlas.settings import get_settings

    settings = get_settings()
    if not settings.embedded:
        raise AtlasError("ATLAS_DATABASE_URL is set: the atlas does not manage that server — stop it with its own tools")
    stopped = embedded.stop(settings.pgdata)
    click.echo("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


@db.command("url")
@click.option("--show-password", is_flag=True, help="Print the password too.")
def db_url(show_password: bool) -> None:
    """Print the database URL in libpq form, e.g. for `psql "$(atlas db url)"`."""
    from atlas import db as dbm
    from atlas.settings import redact

    url = dbm.resolve_url().replace("postgresql+psycopg://", "postgresql://", 1)
    click.echo(url if show_password else redact(url))


# ---------------------------------------------------------------- ingestion: zoo, datasets, ingest, demo

@main.group()
def zoo() -> None:
    """The demo seed cohort: small GPT-2-style models trained here."""


@zoo.command("train")
@click.option("--name", default="demo", show_default=True, help="Cohort name (models are NAME-a, NAME-b, ...).")
@click.option("--seeds", default=5, show_default=True, help="Number of seeds (1..N).")
@click.option("--train-tokens", type=int, default=None, help="Training tokens per seed (default: the demo recipe's).")
@click.option("--data-order", type=click.Choice(["seed", "shared"]), default="seed", show_default=True,
              help="seed: each seed also shuffles the data (like the paper's cohorts); shared: only the init differs.")
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Train on these text files instead of the demo corpus (repeatable).")
@click.option("--force", is_flag=True, help="Retrain even when cached checkpoints exist.")
def zoo_train(name: str, seeds: int, train_tokens: int | None, data_order: str, inputs: tuple[str, ...], force: bool) -> None:
    """Train the tokenizer and one model per seed; cached under ATLAS_HOME/models/NAME."""
    from dataclasses import replace

    from atlas.ingest.corpus import fetch_demo_corpus, read_documents
    from atlas.ingest.datasets import iter_file_documents
    from atlas.ingest.zoo import DEMO, train_cohort

    if seeds < 1:
        raise AtlasError("--seeds must be at least 1")
    config = replace(DEMO, name=name, seeds=tuple(range(1, seeds + 1)), data_order=data_order)
    if train_tokens is not None:
        config = replace(config, train_tokens=train_tokens)
    docs = list(iter_file_documents(inputs)) if inputs else read_documents(fetch_demo_corpus().train)
    trained = train_cohort(config, docs, force=force, log=click.echo)
    for path, label in zip(trained.paths, trained.labels):
        cached = " (cached)" if trained.seconds.get(path.name) == 0 else ""
        click.echo(f"{label}: {path}{cached}")


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
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--batch-size", default=16, show_default=True, help="Context rows per forward pass.")
@click.option("--top-k", default=20, show_default=True, help="Top activating examples kept per neuron.")
@click.option("--top-tokens", default=100, show_default=True, help="Vocabulary tokens kept per neuron (by mean activation).")
@click.option("--checkpoint-every", type=int, default=None,
              help="Tokens between checkpoints [default: 1M; 20M when the accumulators exceed 1 GB].")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--force", is_flag=True, help="Recompute even when the same run is done.")
@click.option("--weights/--no-weights", default=True, show_default=True, help="Compute weight statistics.")
@click.option("--stats/--no-stats", default=True, show_default=True, help="Compute activation statistics.")
@click.option("--batch-delay", type=float, default=0.0, hidden=True)
def ingest_cmd(source, name, cohort, seed_label, dataset_name, device, batch_size, top_k, top_tokens, checkpoint_every,
               resume, force, weights, stats, batch_delay) -> None:
    """Per-neuron statistics of one model: weights, and one streaming pass over a dataset."""
    from atlas import db as dbm
    from atlas.ingest.runs.stats import StatsOptions, ingest_model

    engine = dbm.connect(migrate=True)
    options = StatsOptions(top_k=top_k, top_tokens=top_tokens, batch_size=batch_size,
                           checkpoint_every=checkpoint_every, batch_delay=batch_delay)
    for outcome in ingest_model(engine, source, dataset=dataset_name, name=name, cohort=cohort, seed_label=seed_label,
                                device=device, options=options, force=force, resume=resume, weights=weights,
                                stats=stats):
        click.echo(outcome.describe())


@main.command()
@click.option("--seeds", type=int, default=None, help="Seeds of the demo cohort (default 5).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
def demo(seeds: int | None, device: str) -> None:
    """Train the demo cohort (cached), build the demo dataset, ingest every model; then the later steps."""
    from atlas import db as dbm
    from atlas.ingest.runs.stats import demo_ingest

    from atlas import queries
    from atlas.ingest.runs.classify import classify
    from atlas.ingest.runs.correlate import correlate_cohort

    engine = dbm.connect(migrate=True)
    result = demo_ingest(engine, seeds=seeds, device=device, log=click.echo)
    click.echo(f"correlating the seeds of cohort {result['cohort']} …")
    correlate_cohort(engine, result["cohort"], result["dataset"], device=device)
    click.echo("labelling neuron families and roles …")
    classify(engine, result["dataset"], cohort=result["cohort"], log=click.echo)
    click.echo(queries.status_report(engine))


# ---------------------------------------------------------------- cross-seed correlation

@main.command("correlate")
@click.option("--cohort", required=True, help="Cohort whose seeds are correlated (its models must share a tokenizer).")
@click.option("--dataset", "dataset_name", required=True, help="Token dataset to stream (see `atlas dataset build`).")
@click.option("--reference", default=None, help="Reference model (default: the cohort's first by seed label).")
@click.option("--rotation", type=click.Choice(["orthogonal", "gaussian_unit_rows"]), default="orthogonal",
              show_default=True, help="Random-rotation baseline: Haar orthogonal, or the paper's unit-norm Gaussian rows.")
@click.option("--seed", default=0, show_default=True, help="Seed of the baseline's rotations (recorded with the run).")
@click.option("--top-k", default=10, show_default=True, help="Partner neurons stored per reference neuron and partner.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default=None,
              help="GEMM input precision, float32 accumulation (default: fp16 on CUDA, fp32 on CPU).")
@click.option("--batch-size", type=int, default=None, help="Context rows per forward pass (default: ~8k tokens on CUDA, ~4k on CPU).")
@click.option("--block-size", type=int, default=None,
              help="At most this many reference neurons per pass over the data (default: as many as fit the device).")
@click.option("--checkpoint-tokens", default=20_000_000, show_default=True, help="Kept tokens between checkpoints.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--force", is_flag=True, help="Recompute even when the same run is done.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def correlate_cmd(cohort, dataset_name, reference, rotation, seed, top_k, device, precision, batch_size, block_size,
                  checkpoint_tokens, resume, force, quiet) -> None:
    """Cross-seed correlations and universality of a cohort over a dataset.

    Pearson correlation of every reference neuron with every neuron of each partner (all layers),
    streamed over the dataset's kept tokens with every model run once per batch; the random-rotation
    baseline in the same pass. Stores per neuron and partner the best partner neuron, its rho, the
    baseline max and the top-k partner edges, and per reference neuron max/mean/min correlation,
    mean baseline and excess correlation (universal: excess > 0.5, chosen at query time). The same
    cohort + dataset again is a no-op.
    """
    from atlas import db as dbm
    from atlas.ingest.runs.correlate import correlate_cohort

    engine = dbm.connect(migrate=True)
    correlate_cohort(engine, cohort, dataset_name, reference, rotation=rotation, seed=seed, top_k=top_k, device=device,
                     precision=precision, batch_size=batch_size, block_size=block_size,
                     checkpoint_tokens=checkpoint_tokens, resume=resume, force=force, progress=not quiet,
                     log=click.echo)


# ---------------------------------------------------------------- status

@main.command()
def status() -> None:
    """What is in the atlas: models, datasets, runs, neuron counts, universal share per layer."""
    from atlas import db as dbm
    from atlas import queries

    engine = dbm.connect()
    overview = queries.status_report(engine)
    click.echo(overview)


# ---------------------------------------------------------------- families and roles

@main.command("classify")
@click.option("--cohort", default=None, help="Classify every model of this cohort (families across its seeds).")
@click.option("--model", "models", multiple=True, help="Only this model (repeatable; without --cohort: these models).")
@click.option("--run", "run_id", type=int, default=None, help="Take the cohort and dataset of this correlation run.")
@click.option("--dataset", default=None, help="Name of the token dataset to stream.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--batch-size", default=16, show_default=True, help="Context rows per forward pass.")
@click.option("--max-rows", type=int, default=None, help="Use only the first rows of the dataset.")
@click.option("--min-token-count", default=5, show_default=True, help="Occurrences a token needs to be a unigram feature.")
@click.option("--top-k", default=5, show_default=True, help="Best features stored per neuron.")
@click.option("--universal-only/--all-neurons", default=True, show_default=True, help="Label universal neurons only (the paper; needs a correlation run) or every neuron.")
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
    import sqlalchemy as sa

    from atlas import db as dbm
    from atlas.ingest.runs.classify import ClassifyConfig, classify, thresholds_from_options

    engine = dbm.connect(migrate=True)
    if run_id is not None:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT c.name AS cohort, d.name AS dataset FROM run r LEFT JOIN cohort c ON "
                                       "c.id = r.cohort_id LEFT JOIN dataset d ON d.id = r.dataset_id WHERE r.id = :i"),
                               {"i": run_id}).first()
        if row is None or row.cohort is None:
            raise AtlasError(f"run {run_id} is not a cohort run — give a correlation run id, or --cohort and --dataset")
        cohort, dataset = cohort or row.cohort, dataset or row.dataset
    if not dataset:
        raise AtlasError("give --dataset NAME (or --run ID of a correlation run)")
    if not cohort and not models:
        raise AtlasError("give --cohort NAME, --model NAME or --run ID")
    config = ClassifyConfig(thresholds=thresholds_from_options(thresholds), batch_size=batch_size, max_rows=max_rows,
                            min_token_count=min_token_count, top_k_features=top_k, universal_only=universal_only,
                            universal_threshold=universal_threshold)
    classify(engine, dataset, cohort=cohort, models=list(models) or None, config=config, device=device, force=force,
             log=click.echo)


# ---------------------------------------------------------------- scheduled ingestion

@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only print what would be enqueued.")
def schedule(manifest: str, dry_run: bool) -> None:
    """Enqueue what MANIFEST (TOML) says should be in the atlas and is not yet.

    Each missing step (build a dataset, ingest a model, correlate a cohort, classify it) becomes a
    job that `atlas worker` picks up; steps already queued are not queued twice.
    """
    from atlas import db as dbm
    from atlas import jobs
    from atlas.app.manifest import load_manifest

    loaded = load_manifest(manifest)
    dbm.connect(migrate=True)
    if dry_run:
        from atlas.app.manifest import plan

        outcomes = [(s, "would enqueue") for s in plan(dbm.connect(), loaded)]
    else:
        with jobs.opened_app() as app:
            outcomes = jobs.enqueue_plan(app, loaded)
    if not outcomes:
        click.echo("nothing to do: the atlas has everything the manifest lists")
    for step, outcome in outcomes:
        click.echo(f"{step.key:<50} {outcome}")


@main.command()
@click.option("--manifest", type=click.Path(dir_okay=False), envvar="ATLAS_MANIFEST",
              help="Manifest re-read by the periodic schedule (default: $ATLAS_MANIFEST).")
@click.option("--concurrency", default=1, show_default=True, help="Jobs run at once by this worker.")
@click.option("--until-idle", is_flag=True, help="Exit when the queue is empty instead of waiting for jobs.")
def worker(manifest: str | None, concurrency: int, until_idle: bool) -> None:
    """Run queued ingestion jobs (start one per GPU/machine; they share the database).

    With a manifest, a periodic task (every 5 minutes, ATLAS_SCHEDULE_CRON) enqueues what is
    missing and re-queues jobs whose worker died; a finished step enqueues its successors.
    """
    import logging
    import os

    from atlas import db as dbm
    from atlas import jobs

    dbm.connect(migrate=True)
    if manifest:
        os.environ["ATLAS_MANIFEST"] = str(manifest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    click.echo(f"worker started (concurrency {concurrency}); Ctrl-C to stop")
    jobs.run_worker(concurrency=concurrency, wait=not until_idle)


# ---------------------------------------------------------------- read-only access: UI, export

@db.command("create-reader")
@click.option("--role", default=None, help="Role name (default: <database>_reader, e.g. atlas_reader).")
def db_create_reader(role: str | None) -> None:
    """Create or refresh the read-only role the UI and its SQL page use (idempotent)."""
    from atlas import db as dbm
    from atlas import readonly
    from atlas.settings import redact

    url = readonly.ensure_reader(dbm.connect(), role)
    click.echo(f"read-only role ready: {redact(url)}")


@main.command()
@click.option("--port", default=8501, show_default=True, help="Port to serve on.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: all interfaces).")
def ui(port: int, address: str) -> None:
    """Serve the atlas UI (Streamlit) as the read-only role; prints the local URL."""
    import os
    import socket
    from pathlib import Path

    from atlas import db as dbm
    from atlas import readonly

    reader = os.environ.get("ATLAS_READER_URL") or readonly.ensure_reader(dbm.connect(migrate=True))
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as err:
            raise AtlasError(f"cannot serve on {address}:{port} ({err.strerror}) — pass another --port") from err
    from atlas import ui as ui_package

    app = Path(ui_package.__file__).parent / "app.py"
    shown = "localhost" if address in ("127.0.0.1", "0.0.0.0", "::") else address
    click.echo(f"Neuron Atlas UI: http://{shown}:{port}  (Ctrl-C stops it)", err=False)
    sys.stdout.flush()
    env = dict(os.environ, ATLAS_READER_URL=reader, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    args = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--theme.base", "light", "--client.toolbarMode", "minimal"]
    os.execvpe(sys.executable, args, env)


@main.command("export")
@click.argument("query")
@click.argument("sql_text", required=False)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter of the query, e.g. -p threshold=0.6 -p cohort=demo (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default=None,
              help="Output format (default: from the --out suffix).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="File to write.")
def export_cmd(query: str, sql_text: str | None, params: tuple[str, ...], fmt: str | None, out: str) -> None:
    """Export a query result to Parquet or CSV.

    \b
    QUERY is a query-layer function (universal-neurons, neuron, top-examples, best-partners,
    families, family-members, neurons-for-token, layer-summary, ...; see docs/queries.md) or
    `sql` followed by one read-only SELECT (run as the read-only role, no row cap).
    \b
    Examples:
      atlas export universal-neurons -p threshold=0.6 --out universal.parquet
      atlas export top-examples -p model=demo-a -p layer=0 -p idx=12 --out ex.csv
      atlas export sql "SELECT * FROM layer_universality" --out layers.csv
    """
    from atlas import db as dbm
    from atlas import export, readonly

    kind = export.infer_format(out, fmt)
    engine = dbm.connect()
    if query == "sql":
        if not sql_text:
            raise AtlasError('`atlas export sql` needs the query: atlas export sql "SELECT ..." --out FILE')
        result = readonly.run_sql(readonly.ensure_reader(engine), sql_text, row_cap=10**9, timeout_ms=600_000)
        frame = result.frame
    else:
        if sql_text:
            raise AtlasError(f"unexpected argument {sql_text!r} — pass parameters as -p key=value")
        pairs = {}
        for item in params:
            key, sep, value = item.partition("=")
            if not sep:
                raise AtlasError(f"parameter {item!r} is not KEY=VALUE")
            pairs[key.strip()] = value
        frame = export.run_named(engine, query, pairs)
    path = export.write(frame, out, kind)
    click.echo(f"wrote {frame.height} rows × {frame.width} columns to {path} ({kind})")


if __name__ == "__main__":  # pragma: no cover
    main()
