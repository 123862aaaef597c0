"""Writing outputs safely: the one output rule, atomic and staged writes, stale partials.

:func:`check_outputs` runs before any work in every command that writes; :func:`atomic_write`
(files) and :class:`staged_output` (folders) write under a temporary name in the destination
folder and rename it into place once complete, refusing a file that appeared meanwhile;
:func:`remove_stale_partials` removes what killed writers left.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from isojax.errors import IsojaxInputError


def _check_folder_writable(path: Path) -> Path:
    """Raise unless the folder that will hold ``path`` exists and is writable."""
    folder = path.parent
    if not folder.is_dir():
        raise IsojaxInputError(f"{path}: cannot write, folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise IsojaxInputError(f"{path}: cannot write, folder {folder} is not writable")
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    Args:
      path: the file about to be written.

    Returns:
      ``path`` as a ``Path``.

    Raises:
      IsojaxInputError: its folder does not exist or is not writable, or ``path`` is a folder.
    """
    path = _check_folder_writable(Path(path))
    if path.is_dir():
        raise IsojaxInputError(f"{path}: cannot write, it is a folder")
    return path


def atomic_write(path: Path, write, *, overwrite: bool = True) -> Path:
    """Call ``write(temp_path)`` then rename the temporary file over ``path``.

    The temporary file lives in the same folder (so the rename is atomic), is named
    ``.<name>.partial-<host>-<pid>-<random>.tmp`` (see :func:`remove_stale_partials`) and is
    removed if ``write`` raises, so a failure leaves neither ``path`` nor a temporary file
    behind.

    Args:
      path: the destination; its folder must exist and be writable.
      write: a function of one ``Path`` that writes the complete file there.
      overwrite: replace an existing ``path`` (the default, for files a command owns); with
        False an existing ``path`` is refused, also one that appeared while ``write`` ran.

    Returns:
      ``path``.

    Raises:
      IsojaxInputError: ``overwrite`` is False and ``path`` exists (before or after ``write``).
    """
    path = Path(path)
    if not overwrite:
        check_new_output(path, overwrite=False)
    remove_stale_partials(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_partial_tag()}-",
                                     suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        if overwrite:
            os.replace(temp, path)
        else:
            _rename_no_replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def _appeared(path: Path) -> IsojaxInputError:
    return IsojaxInputError(
        f"{path} appeared while it was being written; not replaced. Pass --overwrite "
        "(command line) or overwrite=True (Python) to replace it, or choose another output")


def _rename_no_replace(temp: Path, path: Path) -> None:
    """Rename the file ``temp`` to ``path``, refusing (atomically, where the file system has
    hard links) to replace a ``path`` that exists."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise _appeared(path) from None
    except OSError:  # no hard links here (some network or FUSE file systems): check, rename
        if os.path.lexists(path):
            raise _appeared(path) from None
        os.rename(temp, path)
        return
    temp.unlink()


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_new_output(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early if ``path`` cannot be written or exists (and ``overwrite`` is False).

    Args:
      path: the output file or folder about to be written.
      overwrite: whether an existing ``path`` may be replaced.

    Returns:
      ``path`` as a :class:`~pathlib.Path`, its folder checked.

    Raises:
      IsojaxInputError: the folder is missing or not writable, or ``path`` exists and
        ``overwrite`` is False (the message names the ``--overwrite`` option).
    """
    path = _check_folder_writable(Path(path))
    if path.exists() and not overwrite:
        raise IsojaxInputError(
            f"{path} already exists; pass --overwrite (command line) or overwrite=True "
            "(Python) to replace it, or choose another output")
    return path


# ----------------------------------------------------------------------------------------
# Checking outputs before any work, and partial outputs left by a killed writer


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder: through links when both exist."""
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return a.resolve() == b.resolve()


def _within(child: Path, folder: Path) -> bool:
    """Whether ``child`` is ``folder`` or lies inside it, however either is spelled or linked."""
    if child.resolve().is_relative_to(folder.resolve()):
        return True
    try:
        target = os.stat(folder)
    except OSError:
        return False
    for ancestor in (Path(os.path.abspath(child)), *Path(os.path.abspath(child)).parents):
        try:
            if os.path.samestat(os.stat(ancestor), target):  # e.g. through a bind mount
                return True
        except OSError:
            continue
    return False


def check_outputs(
    outputs: Sequence[str | os.PathLike],
    *,
    inputs=(),
    overwrite: bool = False,
    log=None,
) -> list[Path]:
    """Fail early, before any work, unless every output of a command may be written.

    The one rule of every isojax command that writes: an output that exists is refused
    unless ``overwrite``; an output that is one of the command's inputs is refused always,
    also with ``overwrite`` (the same file or folder through the same path, another
    spelling, a symbolic or hard link), as is an output inside an input folder (a model
    folder, an input ``.zarr``) and an input inside an output that would be replaced. Then
    the stale partial outputs of each output are cleaned up (:func:`remove_stale_partials`).

    Args:
      outputs: every file or folder the command writes, companion files included (a PSF's
        ``.png``, a calibration's ``.json``), or a folder it writes into (a model folder).
      inputs: what the command reads: a mapping from what it is (``"stack"``,
        ``"model folder"``) to its path, or a sequence of paths; None values and paths that
        do not exist are skipped.
      overwrite: whether existing outputs may be replaced.
      log: called with a line for each stale partial removed or left (default: stderr).

    Returns:
      The outputs as ``Path`` objects, in order.

    Raises:
      IsojaxInputError: an output is an input, lies inside an input folder or holds an
        input; two outputs are the same file; an output's folder is missing or not
        writable; an output exists and ``overwrite`` is False.
        The message says what to do.
    """
    named = list(inputs.items()) if hasattr(inputs, "items") else [("input", p) for p in inputs]
    ins = [(what, Path(p)) for what, p in named if p is not None and os.path.lexists(p)]
    outs = [Path(p) for p in outputs]
    for out in outs:
        for what, inp in ins:
            if _same_file(out, inp):
                also = "" if os.path.abspath(out) == os.path.abspath(inp) else f" {inp}"
                raise IsojaxInputError(
                    f"{out} is the input {what}{also}: choose another output; isojax never "
                    "writes over its input")
            if inp.is_dir() and _within(out, inp):
                raise IsojaxInputError(
                    f"{out} is inside the input {what} {inp}: choose an output outside it; "
                    "isojax never writes into its input")
            if _within(inp, out):
                raise IsojaxInputError(
                    f"the input {what} {inp} is inside the output folder {out}: choose another "
                    "output; isojax never writes over or into its input")
    for k, out in enumerate(outs):
        for other in outs[:k]:
            if _same_file(out, other):
                raise IsojaxInputError(
                    f"{other} and {out} would be the same file (an output and its companion "
                    "file): choose an output whose name ends in .tif")
    for out in outs:
        _check_folder_writable(out)
        if os.path.lexists(out) and not overwrite:
            check_new_output(out, overwrite=False)
            raise IsojaxInputError(  # a dangling symbolic link
                f"{out} already exists (a broken link); pass --overwrite (command line) or "
                "overwrite=True (Python) to replace it, or choose another output")
    for out in outs:
        remove_stale_partials(out, log=log)
    return outs


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _partial_tag(kind: str = "partial") -> str:
    """``<kind>-<host>-<pid>``: who writes a partial output, for :func:`remove_stale_partials`."""
    return f"{kind}-{_host()}-{os.getpid()}"


_RANDOM = r"[A-Za-z0-9_]+"
_OLD_RANDOM = r"[A-Za-z0-9_]{8}"  # tempfile's names, before the writer's identity was added


def _partial_patterns(name: str) -> tuple[re.Pattern, ...]:
    n = re.escape(name)
    who = rf"(?P<host>.+)-(?P<pid>\d+)-{_RANDOM}"
    return (
        re.compile(rf"{n}\.(?:partial|scratch)-{who}"),  # staged_output, predict's scratch
        re.compile(rf"\.{n}\.partial-{who}\.tmp"),  # atomic_write
        re.compile(rf"{n}\.(?:partial|scratch)-{_OLD_RANDOM}"),  # the same, older isojax
        re.compile(rf"\.{n}\.{_OLD_RANDOM}\.tmp"),
        re.compile(rf"{n}\.old-{who}"),  # staged_output: the output being replaced
    )


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` on this host may still be running (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


#: Partial outputs already reported as possibly in use, so each is named once per process.
_REPORTED: set[str] = set()


def remove_stale_partials(path: str | os.PathLike, *, log=None) -> list[Path]:
    """Remove the partial outputs of ``path`` left by a writer that no longer runs.

    Where partials come from: isojax writes every output under a temporary sibling name and
    renames it into place only when it is complete (:class:`staged_output`,
    :func:`atomic_write`); a writer killed meanwhile (``kill -9``, an out-of-memory kill,
    the end of a batch job's time) leaves that temporary name behind:
    ``<name>.partial-<host>-<pid>-<random>`` (streamed predictions, OME-Zarr),
    ``<name>.scratch-<host>-<pid>-<random>`` (a streamed prediction's scratch store) or
    ``.<name>.partial-<host>-<pid>-<random>.tmp`` (TIFF, PNG, JSON files); and, while an
    existing output is replaced with ``overwrite``, the old one is moved aside to
    ``<name>.old-<host>-<pid>-<random>`` and then deleted.

    A partial of ``path`` whose writer ran on this host and is no longer running is removed,
    with a log line saying so. One that may still be in use (its process is running, it
    comes from another host, or it has an older name without a process id) is left, with a
    warning that says how to remove it. A previous output moved aside is removed only when
    its writer is dead and the new output is in place; if the output is missing, the warning
    says how to restore it. Nothing else is ever removed.

    Args:
      path: the output about to be written.
      log: called with each line (default: stderr).

    Returns:
      The partials removed.
    """
    log = log or _stderr_log
    path = Path(path)
    folder = path.parent
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    new, new_tmp, old, old_tmp, replaced = _partial_patterns(path.name)
    host, removed = _host(), list[Path]()
    for name in names:
        aside = replaced.fullmatch(name)
        if aside is not None:
            _previous_output(path, folder / name, aside, host, removed, log)
            continue
        match = new.fullmatch(name) or new_tmp.fullmatch(name)
        if match is None and not (old.fullmatch(name) or old_tmp.fullmatch(name)):
            continue
        partial = folder / name
        if match is not None and match["host"] == host and not _pid_running(int(match["pid"])):
            _remove(partial)
            removed.append(partial)
            log(f"removed {partial}: a partial output of {path.name} left by isojax process "
                f"{match['pid']} on this host, which is no longer running")
            continue
        if str(partial) in _REPORTED:
            continue
        _REPORTED.add(str(partial))
        if match is None:
            who = "an older isojax (its name holds no process id)"
        elif match["host"] != host:
            who = f"process {match['pid']} on host {match['host']}"
        else:
            who = f"process {match['pid']}, still running on this host"
        log(f"warning: {partial} is a partial output of {path.name} left by {who}; if no "
            f"other isojax is writing {path}, remove it: rm -r '{partial}'")
    return removed


def _previous_output(path: Path, aside: Path, match, host: str, removed: list, log) -> None:
    """An output that :class:`staged_output` moved aside to replace it, left by a killed writer.

    Removed only when its writer is dead and the new output is in place (it was being
    deleted); else left with a warning (how to restore it when the output is missing).
    """
    pid, dead = match["pid"], match["host"] == host and not _pid_running(int(match["pid"]))
    if dead and os.path.lexists(path):
        _remove(aside)
        removed.append(aside)
        log(f"removed {aside}: the previous {path.name}, replaced by isojax process {pid} on "
            "this host, which stopped while deleting it")
        return
    if str(aside) in _REPORTED:
        return
    _REPORTED.add(str(aside))
    if not os.path.lexists(path):
        log(f"warning: {aside} is the previous {path.name}, moved aside by isojax process {pid} "
            f"to be replaced, and {path} is missing: if no isojax is writing it, restore it: "
            f"mv '{aside}' '{path}'")
    else:
        log(f"warning: {aside} is a previous {path.name} being replaced by isojax process {pid} "
            f"on host {match['host']}; if no other isojax is writing {path}, remove it: "
            f"rm -r '{aside}'")


class staged_output:  # lower case: used as a context manager, like open
    """Write a file or folder under a temporary sibling name, then rename it into place.

    ``with staged_output(path, overwrite=...) as temp:`` yields ``temp``, a path next to
    ``path`` named ``<name>.partial-<host>-<pid>-<random>`` that does not exist yet. When
    the block ends normally, ``temp`` is renamed to ``path`` (an existing ``path`` is
    replaced only with ``overwrite=True``, after the new one is complete; one that appeared
    meanwhile is refused without it); when it raises, ``temp`` is removed and ``path`` is
    untouched.

    Where partials come from: if the writing process is killed (``kill -9``, an
    out-of-memory kill, a batch job's time limit) ``temp`` stays behind. The host and process
    id in its name let the next write of the same ``path`` recognise it: it is removed when
    that process no longer runs on this host, else left with a warning that says how to
    remove it (:func:`remove_stale_partials`, called when the stage starts).
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, log=None):
        self.path = check_new_output(path, overwrite=overwrite)
        self.overwrite = overwrite
        remove_stale_partials(self.path, log=log)

    def __enter__(self) -> Path:
        holder = Path(tempfile.mkdtemp(dir=self.path.parent,
                                       prefix=f"{self.path.name}.{_partial_tag()}-"))
        holder.rmdir()  # reserve a unique name; the writer creates the file or folder
        self.temp = holder
        return holder

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is not None:
            _remove(self.temp)
            return False
        try:
            self._commit()
        except BaseException:
            _remove(self.temp)
            raise
        return False

    def _commit(self) -> None:
        path, temp = self.path, self.temp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, (0o777 if temp.is_dir() else 0o666) & ~umask)
        if not (path.exists() or path.is_symlink()):
            if temp.is_file():
                _rename_no_replace(temp, path)
            else:
                os.rename(temp, path)
            return
        if not self.overwrite:
            raise _appeared(path)
        if temp.is_file() and not path.is_dir():
            os.replace(temp, path)
            return
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{path.name}.{_partial_tag('old')}-"))
        old.rmdir()
        os.rename(path, old)
        try:
            os.rename(temp, path)
        except BaseException:
            os.rename(old, path)
            raise
        _remove(old)
