"""The ``atlas`` command: the group and its error handling; the commands live in the modules of
this package (``db``, ``compute``, ``schedule``, ``browse``).

Every command prints a one-line error and exits non-zero when something is wrong (``--debug``
shows the traceback). Commands that compute import torch-heavy modules inside the command, so
``atlas --help`` and the read-only commands start fast.
"""

from __future__ import annotations

import sys

import click
import psycopg
import sqlalchemy as sa

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
        except (sa.exc.OperationalError, psycopg.OperationalError) as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from atlas.runs import error_line

            click.secho(f"error: {error_line(err)}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted — rerun the same command to resume", fg="yellow", err=True)
            sys.exit(130)


def check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (checked before anything runs)."""
    import re

    if value is None or re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value
    raise click.BadParameter(f"{value!r} is not a device — use auto, cpu, cuda or cuda:N")


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
      ATLAS_DEVICE        where queued steps compute (auto, cpu, cuda, cuda:1, ...)
    \b
    Typical session:
      atlas db upgrade            create or migrate the schema
      atlas zoo train             train the demo seed cohort (cached)
      atlas dataset build ...     tokenise a corpus into context rows
      atlas ingest ...            per-neuron statistics of a model over a dataset
      atlas correlate ...         cross-seed correlations and universality
      atlas classify ...          families and functional roles
      atlas status                what is in the atlas
    \b
    Or describe the atlas in a manifest and let workers fill it:
      atlas schedule atlas.toml   enqueue what is missing
      atlas worker                run queued steps (one per GPU; any number of machines)
      atlas queue                 the queue's jobs by state
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


from atlas.app.cli import browse, compute, db, schedule  # noqa: E402,F401  (register the commands)
