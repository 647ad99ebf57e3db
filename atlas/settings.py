"""Settings in one place, read from the environment.

``ATLAS_DATABASE_URL``  a PostgreSQL URL (``postgresql://user:pass@host:5432/db``). When unset the
                        atlas starts (or reuses) an embedded PostgreSQL under the data home.
``ATLAS_HOME``          the data home: embedded database, trained demo models, corpora, checkpoints.
                        Defaults to ``./.atlas`` (the current directory), so a checkout is self-contained.
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
    return Settings(database_url=url, home=home)


def normalize_url(url: str) -> str:
    """Return a SQLAlchemy URL that uses the psycopg 3 driver, whatever form the user gave."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL with its password hidden, safe to print in error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show nothing secret
        return "<unparsable database URL>"
