"""What training tells the user while it runs: a progress bar or lines, and a time estimate.

A progress bar on a terminal; when stderr is not one (a log file, SLURM, nohup) a progress
line every ``log_every`` seconds and at each validation instead. After the first steps
(the compilation excluded) one line estimates the time the run will take; on CPU, with more
than 10 minutes to go, it adds a hint about faster settings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import jax
from tqdm import tqdm

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    """``"3 h 41 min"``, ``"12 min"``, ``"40 s"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    h, m = divmod(minutes, 60)
    return f"{h} h {m} min" if h else f"{m} min"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """The progress report of one training run (stateful: the clock, the bar).

    Args:
      total: the run's last step.
      start: the step it starts from.
      show: show progress at all (the bar, or lines when stderr is not a terminal).
      log: where the lines go.
      log_every: seconds between progress lines.
      faster: ``"--flag value"`` settings that would be faster on CPU, for the estimate.
    """

    def __init__(self, *, total: int, start: int, show: bool, log: Callable[[str], None],
                 log_every: float, faster: list[str]):
        self.total, self.log, self.log_every, self.faster = total, log, log_every, faster
        self.bar = (tqdm(total=total, initial=start, desc="train", unit="step",
                         file=sys.stderr, disable=None) if show else None)
        self.lines = show and not _stderr_is_terminal()  # progress lines instead of the bar
        self.steps, self.seconds = 0, 0.0  # timed steps (the first compiles: not timed)
        self.first: tuple[int, float] | None = None  # (step, time) after the first step
        self.line_time = time.perf_counter()
        self.estimated = False
        self.val: tuple[int, float] | None = None  # the last validation: (step, loss)

    def timed(self, done: int, t_step: float) -> None:
        """Count step ``done``, which began at ``t_step`` (``time.perf_counter``)."""
        if self.first is None:  # the first step compiles: not timed
            self.first = (done, time.perf_counter())
        else:
            self.steps += 1
            self.seconds += time.perf_counter() - t_step

    def validated(self, done: int, loss: float) -> None:
        """Note the validation loss at step ``done`` (shown in the progress lines)."""
        self.val = (done, loss)

    def report(self, done: int, loss: float, *, validated: bool) -> None:
        """Update the bar, log the estimate once and a progress line when one is due."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        if not self.estimated and done < self.total and (self.steps >= 3 or self.seconds >= 30):
            self._estimate(done)
        if self.lines and (validated or time.perf_counter() - self.line_time >= self.log_every):
            self._line(done, loss)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()

    def _remaining(self, done: int) -> str:
        if self.first is None or done <= self.first[0]:
            return "steps/s not known yet"
        rate = (done - self.first[0]) / max(time.perf_counter() - self.first[1], 1e-9)
        return f"{rate:.3g} steps/s, about {_duration((self.total - done) / rate)} left"

    def _line(self, done: int, loss: float) -> None:
        val = "" if self.val is None else f", val_loss {self.val[1]:.4g} (step {self.val[0]})"
        self.log(f"step {done}/{self.total}: loss {loss:.4g}{val}, {self._remaining(done)}")
        sys.stderr.flush()
        self.line_time = time.perf_counter()

    def _estimate(self, done: int) -> None:
        """Log once the run's estimated time, from the steps after the first (compiled)."""
        per_step = self.seconds / self.steps
        left = (self.total - done) * per_step
        backend = jax.default_backend()
        msg = (f"about {_duration(left)} for the {self.total - done} steps left of "
               f"{self.total} ({per_step:.3g} s/step on {backend})")
        if backend == "cpu" and left > 600:
            msg += ("; on CPU, smaller settings are faster per step: " + " ".join(self.faster)
                    + " (about 20x with CARE's defaults), or train on a GPU"
                    if self.faster else "; a GPU is much faster")
        self.log(msg)
        self.estimated = True
