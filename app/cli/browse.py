"""Reading the atlas: ``status``, ``ui``, ``export``."""

from __future__ import annotations

import os
import sys

import click

from atlas.app.cli import main
from atlas.errors import AtlasError


@main.command()
def status() -> None:
    """What is in the atlas: models, datasets, runs, neuron counts, universal share per layer."""
    from atlas import db as dbm
    from atlas import queries

    engine = dbm.connect()
    overview = queries.status_report(engine)
    click.echo(overview)



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
    export.check_destination(out)
    engine = dbm.connect()
    if query == "sql":
        if not sql_text:
            raise AtlasError('`atlas export sql` needs the query: atlas export sql "SELECT ..." --out FILE')
        reader = os.environ.get("ATLAS_READER_URL") or readonly.ensure_reader(engine)
        result = readonly.run_sql(reader, sql_text, row_cap=10**9, timeout_ms=600_000)
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


