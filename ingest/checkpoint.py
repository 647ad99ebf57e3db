"""Checkpoints of streaming runs: one format for stats, correlation and classify.

A checkpoint belongs to ONE run of ONE database. Its identity — the database (cluster system
identifier, database name and oid: ``atlas.db.database_identity``), the run id and key, the content
hashes of the models and of the dataset, the run's parameters and the code version — names the
file and is stored inside it. ``load`` resumes only from a file whose stored identity equals the
run's; a checkpoint of the same run made with other parameters or another code version is
discarded with a warning, and files of other databases sharing the directory are never read or
touched. Writes are atomic (temporary file, fsync, rename) and loads use ``weights_only=True``.

Typical use inside a run::

    ckpt = Checkpoint.for_run(run, models=[loaded.revision], dataset=info.content_hash)
    state = ckpt.load() if resume else ckpt.discard()   # dict or None
    schedule = CheckpointSchedule(min_tokens=20_000_000)
    ...
    schedule.advance(kept_tokens)
    if schedule.due(payload_bytes(acc.state_dict())):
        ckpt.save({"next_row": 128, "accumulators": acc.state_dict()}, schedule)

``CheckpointSchedule`` keeps checkpoints from costing more than a set share of the run's time
(default 5 %): it times every save and allows the next one only once the run has been going long
enough to pay for it. At paper scale a correlation checkpoint is ~48 GB of float64 totals, whose
write takes tens of seconds (bench/bench_checkpoint.py measures the rate and projects the cost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger("atlas.checkpoint")

FORMAT = 2  # bump when the payload layout changes: older files are discarded, never misread


@dataclass(frozen=True)
class CheckpointIdentity:
    """Everything a checkpoint must match to be resumed."""

    database: str
    run_id: int
    run_key: str
    kind: str
    models: tuple[str, ...]
    dataset: str
    params: str  # sha256 of the run's parameters (canonical JSON)
    code_version: str
    format: int = FORMAT

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def database_digest(self) -> str:
        return hashlib.sha256(self.database.encode()).hexdigest()[:10]


class Checkpoint:
    """The checkpoint file of one run: ``<dir>/<kind>-db<database>-run<id>-<identity>.pt``."""

    def __init__(self, directory: Path, identity: CheckpointIdentity, *, warn: Callable[[str], Any] | None = None):
        self.directory = Path(directory)
        self.identity = identity
        self._warn = warn or (lambda message: log.warning(message))
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    @classmethod
    def for_run(cls, run: Any, *, models: Sequence[str | None], dataset: str | None,
                warn: Callable[[str], Any] | None = None) -> Checkpoint:
        """The checkpoint of an ``atlas.runs.RunHandle`` over models (content hashes) and a dataset."""
        from atlas.db import database_identity
        from atlas.runs import code_version
        from atlas.settings import get_settings

        identity = CheckpointIdentity(
            database=database_identity(run.engine), run_id=int(run.id), run_key=run.key, kind=run.kind,
            models=tuple(str(m) for m in models), dataset=str(dataset),
            params=hashlib.sha256(json.dumps(run.params, sort_keys=True, default=str).encode()).hexdigest(),
            code_version=code_version(),
        )
        return cls(get_settings().checkpoints_dir, identity, warn=warn)

    @property
    def _prefix(self) -> str:
        i = self.identity
        return f"{i.kind}-db{i.database_digest}-run{i.run_id}-"

    @property
    def path(self) -> Path:
        return self.directory / f"{self._prefix}{self.identity.digest()}.pt"

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The saved state of this run, or None (nothing saved, or saved by something else: warned and removed)."""
        try:
            self.wait()
        except Exception as err:  # noqa: BLE001 - the last write failed: the file before it (if any) stands
            self._warn(f"checkpoint {self.path.name} could not be written ({type(err).__name__}: {err})")
        self._discard_others()
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - a torn or corrupt file is restarted, never fatal
            self._warn(f"checkpoint {self.path.name} cannot be read ({type(err).__name__}); starting the run over")
            self.discard()
            return None
        stored = payload.get("identity") if isinstance(payload, dict) else None
        if stored != asdict(self.identity):
            self._warn(f"checkpoint {self.path.name} belongs to another run or database; starting the run over")
            self.discard()
            return None
        return payload["state"]

    def save(self, state: dict[str, Any], schedule: CheckpointSchedule | None = None, *,
             background: bool = False) -> float:
        """Atomically replace the checkpoint with ``state`` (tensors, numbers, strings, lists, dicts);
        returns the seconds the caller waited (also told to ``schedule``).

        ``background=True``: copy the tensors to host memory now (the run may change its own right
        after) and write the file in a thread while the run goes on — what a GPU run waits for is
        the device-to-host copy, not the disk. One write at a time: a save first waits for the last.
        """
        t0 = time.monotonic()
        self.wait()
        payload = {"identity": asdict(self.identity), "state": _host_copy(state) if background else state}
        if background:
            self._writer = threading.Thread(target=self._write_guarded, args=(payload,), name="atlas-checkpoint",
                                            daemon=True)
            self._writer.start()
        else:
            self._write(payload)
        seconds = time.monotonic() - t0
        if schedule is not None:
            schedule.saved(seconds, payload_bytes(state))
        return seconds

    @property
    def writing(self) -> bool:
        """A background save is still being written."""
        return self._writer is not None and self._writer.is_alive()

    def wait(self) -> None:
        """Wait for a background save to be on disk; raises what it raised."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write(self, payload: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def _write_guarded(self, payload: dict[str, Any]) -> None:
        try:
            self._write(payload)
        except BaseException as err:  # noqa: BLE001 - handed to the run by wait()
            self._error = err

    def discard(self) -> None:
        """Remove this run's checkpoint (after publishing, or to start over). Returns None."""
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - a failed write of a checkpoint being discarded does not matter
            pass
        self.path.unlink(missing_ok=True)
        for stale in self.directory.glob(f"{self.path.name}.tmp*"):
            stale.unlink(missing_ok=True)

    def _discard_others(self) -> None:
        """Older checkpoints of the SAME run and database (other parameters, code version or format)."""
        if not self.directory.exists():
            return
        for other in self.directory.glob(f"{self._prefix}*.pt"):
            if other != self.path:
                self._warn(f"checkpoint {other.name} of run {self.identity.run_id} was made with other parameters "
                           "or another code version; not resuming from it")
                other.unlink(missing_ok=True)


def _host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory (a snapshot: later changes to the originals do not show)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


def payload_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint payload: what a save writes, give or take its headers."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


@dataclass
class CheckpointSchedule:
    """When a streaming run should checkpoint: after at least ``min_tokens`` tokens since the last
    save, and only if writing would keep all saves within ``max_overhead`` of the run's time so far.

    Each save is timed (``saved``); the next one's cost is predicted from the measured write rate
    (``assumed_rate`` bytes/s until a save was measured). So the share of time spent writing stays
    at or below ``max_overhead`` after every save, however slow the disk or large the state: a
    slower disk or a larger state means rarer checkpoints, never a slower run. ``max_overhead=None``
    checkpoints every ``min_tokens`` tokens, whatever it costs.
    """

    min_tokens: int
    max_overhead: float | None = 0.05
    assumed_rate: float = 200e6  # bytes/s before the first save is measured (a slow disk)
    clock: Any = time.monotonic
    tokens_since: int = 0
    write_s: float = 0.0  # seconds spent saving so far
    saves: int = 0
    rate: float | None = None  # measured bytes/s of the last save
    _started: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    def advance(self, tokens: int) -> None:
        self.tokens_since += tokens

    def predicted_seconds(self, nbytes: int) -> float:
        return nbytes / (self.rate or self.assumed_rate)

    def due(self, nbytes: int) -> bool:
        """Whether to save a state of ``nbytes`` now."""
        if self.tokens_since < self.min_tokens:
            return False
        if self.max_overhead is None:
            return True
        cost = self.predicted_seconds(nbytes)
        elapsed = self.clock() - self._started + cost
        return self.write_s + cost <= self.max_overhead * elapsed

    def saved(self, seconds: float, nbytes: int) -> None:
        self.write_s += seconds
        self.saves += 1
        self.tokens_since = 0
        if seconds > 0 and nbytes > 0:
            self.rate = nbytes / seconds

    @property
    def overhead(self) -> float:
        """Share of the run's time so far spent saving."""
        elapsed = self.clock() - self._started
        return self.write_s / elapsed if elapsed > 0 else 0.0
