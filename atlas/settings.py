"""Settings in one place, read from the environment.

``ATLAS_DATABASE_URL``  a PostgreSQL URL (``postgresql://user:pass@host:5432/db``). When unset the
                        atlas starts (or reuses) an embedded PostgreSQL under the data home.
``ATLAS_HOME``          the data home: embedded database, trained demo models, corpora, checkpoints.
                        Defaults to ``./.atlas`` (the current directory), so a checkout is self-contained.
``ATLAS_DEVICE``        where queued steps compute: ``auto`` (default: CUDA when present), ``cpu``,
                        ``cuda``, ``cuda:1``, ... (``atlas worker --device`` sets it).

Scheduling (``atlas worker``), in seconds; a job whose worker died is retried at most about
``STALLED_AFTER + WORKER_HEARTBEAT + RECONCILE_EVERY`` after the worker's last sign of life:

``ATLAS_WORKER_HEARTBEAT_S``  how often a worker says it is alive (default 10)
``ATLAS_STALLED_AFTER_S``     silence after which a worker counts as dead (default 45)
``ATLAS_RECONCILE_EVERY_S``   period of the reconcile task: retry dead workers' jobs, enqueue what
                              the manifest still lacks (default 60; divides 60, or a multiple of 60)
``ATLAS_CHECKPOINT_EVERY``    tokens between checkpoints of queued steps (default: each run kind's own;
                              lower it on machines that may be preempted)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    home: Path
    device: str = "auto"
    worker_heartbeat_s: float = 10.0
    stalled_after_s: float = 45.0
    reconcile_every_s: int = 60
    checkpoint_every: int | None = None

    @property
    def embedded(self) -> bool:
        """True when no server URL is configured and the embedded PostgreSQL is used."""
        return self.database_url is None

    @property
    def pgdata(self) -> Path:
        return self.home / "pg"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def corpora_dir(self) -> Path:
        return self.home / "corpora"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"


def get_settings() -> Settings:
    """Read the settings from the environment (cheap; call it where needed, don't cache globally)."""
    url = os.environ.get("ATLAS_DATABASE_URL") or None
    home = Path(os.environ.get("ATLAS_HOME") or Path.cwd() / ".atlas").expanduser().resolve()
    return Settings(
        database_url=url, home=home, device=os.environ.get("ATLAS_DEVICE") or "auto",
        worker_heartbeat_s=_positive("ATLAS_WORKER_HEARTBEAT_S", 10.0),
        stalled_after_s=_positive("ATLAS_STALLED_AFTER_S", 45.0),
        reconcile_every_s=int(_positive("ATLAS_RECONCILE_EVERY_S", 60)),
        checkpoint_every=int(_positive("ATLAS_CHECKPOINT_EVERY", 0)) or None,
    )


def _positive(name: str, default: float) -> float:
    """A positive number from the environment (``default`` when unset); a one-line error otherwise."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        from atlas.errors import AtlasError

        raise AtlasError(f"{name}={raw!r} is not a positive number — fix or unset it")
    return value


def normalize_url(url: str) -> str:
    """Return a SQLAlchemy URL that uses the psycopg 3 driver, whatever form the user gave.

    Anything that is not a PostgreSQL URL is refused in one line (``sqlite:///x.db``, ``mysql://…``,
    a port that is not a number, text that is no URL at all).
    """
    from atlas.errors import AtlasError

    example = "postgresql://user:password@host:5432/database"
    try:
        parsed = make_url(url)
        port = parsed.port  # parses the port: "host:notaport" fails here
    except Exception as err:  # noqa: BLE001 - sqlalchemy raises ArgumentError/ValueError for malformed URLs
        raise AtlasError(f"the database URL {redact(url)!r} cannot be read ({type(err).__name__}) — write it as "
                         f"{example}, or unset ATLAS_DATABASE_URL to use the embedded database") from None
    if not parsed.drivername.split("+")[0] in ("postgres", "postgresql"):
        raise AtlasError(f"the database URL is for {parsed.drivername.split('+')[0]}, but the atlas needs PostgreSQL "
                         f"— give {example}, or unset ATLAS_DATABASE_URL to use the embedded database")
    if port is not None and not 0 < port < 65536:
        raise AtlasError(f"the database URL's port {port} is out of range — write it as {example}")
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with its password hidden, safe to print in error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show nothing secret
        return "<unparsable database URL>"
