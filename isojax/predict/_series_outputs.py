"""The staged outputs of a series prediction and ``--resume``: what process 0 claims and opens.

:func:`isojax.predict.series.predict_series_file` writes each output (the restoration, and
the uncertainty map) under a temporary sibling name, renamed into place once complete
(:class:`isojax.io.staged_output`). An OME-Zarr output records which time points are
finished; when a run is killed or interrupted its partial stays, and ``--resume``:

* finds the dead partial written for the same input, model and selection (the
  ``identity`` recorded in the store) and renames it to this process's own partial name
  (:func:`_adopt_partial`), refusing one written for something else;
* stages the output from it (:class:`_SeriesStage`), which keeps the partial again when
  the run is interrupted with time points finished.

Process 0 does both before any other process writes (:func:`_claim`, then
:func:`_open_stores`; :mod:`isojax.predict.spread`).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from isojax.errors import IsojaxInputError
from isojax.io import HyperstackZarr, check_outputs, create_hyperstack_zarr, staged_output
from isojax.io.outputs import _host, _partial_tag, _pid_running

if TYPE_CHECKING:
    from isojax.predict.series import SeriesPrediction

Log = Callable[[str], None]


class _SeriesStage(staged_output):
    """:class:`isojax.io.staged_output` that may start from an adopted partial and keep it.

    With ``resume_from`` (a partial renamed to this process's own name) the block writes
    there; with ``keep`` set when the block is interrupted, the partial stays for
    ``--resume`` instead of being removed.
    """

    def __init__(self, path, *, overwrite: bool, log: Log, resume_from: Path | None):
        self.resume_from, self.keep = resume_from, False
        mine = None if resume_from is None else str(resume_from)
        super().__init__(path, overwrite=overwrite,
                         log=lambda m: None if mine is not None and mine in m else log(m))

    def __enter__(self) -> Path:
        if self.resume_from is None:
            return super().__enter__()
        self.temp = self.resume_from
        return self.temp

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if self.keep and exc_type is not None:
            return False
        return super().__exit__(exc_type, exc, tb)


def _adopt_partial(output: Path, identity: dict, log: Log) -> Path | None:
    """Rename the dead partial of ``output`` written for ``identity`` to this process's name.

    Returns the renamed partial, or None when there is none (the run starts afresh).

    Raises:
      IsojaxInputError: a dead partial was written for another input, model or selection.
    """
    pattern = re.compile(rf"{re.escape(output.name)}\.partial-(?P<host>.+)-(?P<pid>\d+)-\w+")
    found, other = [], None
    for p in sorted(output.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        if m is None or not p.is_dir() or m["host"] != _host():
            continue
        pid = int(m["pid"])  # this process's own: an earlier call that was interrupted
        if pid != os.getpid() and _pid_running(pid):
            continue
        try:
            store = HyperstackZarr.open(p)
            written = store.attributes.get("isojax", {}).get("series")
        except (IsojaxInputError, OSError, ValueError):
            continue
        if written == identity:
            found.append((len(store.done()), p))
        else:
            other = other or (p, written or {})
    if not found:
        if other is not None:
            p, written = other
            key = next((k for k in identity if written.get(k) != identity[k]), "the layout")
            raise IsojaxInputError(
                f"--resume: the partial output {p} was written with another {key}; run the "
                f"command that wrote it, or remove it (rm -r '{p}') and drop --resume")
        log(f"--resume: no partial output of {output} to continue; starting afresh")
        return None
    n, partial = max(found)
    mine = output.parent / f"{output.name}.{_partial_tag()}-{secrets.token_hex(4)}"
    os.rename(partial, mine)
    log(f"--resume: continuing {partial.name} ({n} time point{'s' if n != 1 else ''} "
        "finished)")
    return mine


class _Target(NamedTuple):
    """One output of a series prediction: the restoration, or the uncertainty map.

    ``identity`` is recorded in a staged OME-Zarr (what ``--resume`` checks); ``adopted``
    is the dead partial that ``--resume`` renamed to this process's name, or None.
    """

    path: Path
    identity: dict
    adopted: Path | None = None


def _claim(targets: list[_Target], *, resume: bool, overwrite: bool, inputs: dict,
           log: Log) -> list[_Target]:
    """Process 0's checks of the outputs: adopt the partials (``resume``), check the outputs.

    Returns:
      ``targets`` with the adopted partials.
    """
    if resume:
        targets = [t._replace(adopted=_adopt_partial(t.path, t.identity, log))
                   for t in targets]
    mine = [str(t.adopted) for t in targets if t.adopted is not None]
    check_outputs([t.path for t in targets], inputs=inputs, overwrite=overwrite,
                  log=lambda m: None if any(a in m for a in mine) else log(m))
    return targets


def _open_stores(summary: SeriesPrediction, targets: list[_Target], stack, *,
                 overwrite: bool, log: Log) -> tuple[list[_SeriesStage], list[HyperstackZarr]]:
    """Process 0: stage every target (entered on ``stack``) and create or open its store."""
    stages, stores = [], []
    for target in targets:
        stage = _SeriesStage(target.path, overwrite=overwrite, log=log,
                             resume_from=target.adopted)
        temp = stack.enter_context(stage)
        if target.adopted is not None:
            store = HyperstackZarr.open(temp)
        else:
            store = create_hyperstack_zarr(
                temp, summary.shape, target.identity["dtype"], spacing=summary.spacing,
                time_interval=summary.time_interval, channel_names=summary.channel_names,
                extra={"isojax": {"series": target.identity}})
        stages.append(stage)
        stores.append(store)
    return stages, stores


