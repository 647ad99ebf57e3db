"""What every run kind shares: execution options, the outcome, and progress reporting.

Each run kind is one module of this package with the same shape::

    run_<kind>(engine, subject, dataset, options) -> RunOutcome

where ``options`` is a ``RunOptions`` subclass: the fields its ``run_params()`` returns identify the
run (same parameters, same results: a repeat is a no-op), the fields of ``RunOptions`` itself only
say how to execute it (device, resume or not, progress bar, where messages go).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

PROGRESS_EVERY_S = 5.0  # the run row's progress is at most this old (or one batch, whichever is rarer)


def _print(message: str) -> None:
    print(message, flush=True)


@dataclass
class RunOptions:
    """How to execute a run (never part of its identity)."""

    device: str = "auto"
    force: bool = False  # recompute a finished run
    resume: bool = True  # continue from this run's checkpoint when there is one
    progress: bool = True  # a progress bar on stderr
    log: Callable[[str], Any] = field(default=_print, repr=False, compare=False)


@dataclass
class RunOutcome:
    """What a run did: ``status`` is ``done`` or ``skipped`` (the same run was already done)."""

    kind: str
    subject: str
    run_id: int | None
    status: str
    tokens: int = 0
    seconds: float = 0.0
    resumed_at: int = 0  # tokens already done when this process took the run over
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.status == "skipped":
            return f"{self.kind} of {self.subject}: already done (use --force to recompute)"
        rate = f", {self.tokens / self.seconds:,.0f} tok/s" if self.tokens and self.seconds > 0 else ""
        resumed = f", resumed at {self.resumed_at:,} tokens" if self.resumed_at else ""
        return f"{self.kind} of {self.subject}: done in {self.seconds:.1f} s (run {self.run_id}{rate}{resumed})"


class Progress:
    """A progress bar plus the run row's ``tokens_done``, written at most every ``PROGRESS_EVERY_S``."""

    def __init__(self, run: Any, total: int, initial: int, desc: str, enabled: bool):
        from tqdm.auto import tqdm

        self.run, self.total, self.done = run, total, initial
        self._bar = tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=desc, disable=not enabled,
                         dynamic_ncols=True, leave=False, smoothing=0.1)
        self._last = time.monotonic()
        run.progress(initial, total)

    def advance(self, tokens: int) -> None:
        self.done += tokens
        self._bar.update(tokens)
        if time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.run.progress(self.done)
        self._last = time.monotonic()

    def close(self) -> None:
        self._bar.close()
        self.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
