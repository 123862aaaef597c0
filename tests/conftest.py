"""Shared fixtures for the PSF, I/O and command-line tests, and one XLA compilation cache
for the whole run."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "psf"


def _compilation_cache() -> Path | None:
    """JAX's persistent compilation cache in a folder of this test run, shared by the
    pytest-xdist workers and by the subprocesses that tests start (they inherit the
    environment): the same tiny network trained in several files, or by a killed run and
    its resume, is compiled once. None when the caller set a cache folder of their own."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return None
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    path = Path(tempfile.gettempdir()) / f"isojax-tests-xla-cache-{run}"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    if "jax" in sys.modules:  # imported before this file: set it in the running process too
        import jax

        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return path


_CACHE = _compilation_cache()


def pytest_sessionfinish(session):
    """The run's cache folder goes with the run (removed by the controller, after the
    workers, or by the only process without xdist)."""
    if _CACHE is not None and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def psf_data() -> Path:
    """Folder with the cropped real bead files (see its README for provenance and licences)."""
    return DATA


# A writer that starts a real isojax write, says where its partial output is, then waits to
# be killed: how a `kill -9` (or an out-of-memory kill) leaves a partial output behind.
_WRITER = r"""
import sys, time
from pathlib import Path

import numpy as np

kind, out = sys.argv[1], Path(sys.argv[2])

def hold(temp):
    print(temp, flush=True)
    time.sleep(600)

if kind == "file":  # atomic_write: TIFF, PNG and JSON outputs
    from isojax.io import atomic_write

    def write(temp):
        Path(temp).write_bytes(b"half a file")
        hold(temp)

    atomic_write(out, write)
elif kind == "folder":  # staged_output: OME-Zarr and BigTIFF outputs
    from isojax.io import staged_output

    with staged_output(out) as temp:
        temp.mkdir()
        (temp / "zarr.json").write_text("{}")
        hold(temp)
else:  # a streamed prediction of the stack in argv[3], stopped at its first network call
    import jax
    import jax.numpy as jnp

    from isojax.predict_large import predict_large

    def block(b):
        partials = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))
        hold(" ".join(partials))
        return b

    def net(b):
        return jax.pure_callback(block, jax.ShapeDtypeStruct(b.shape, jnp.float32), b)

    predict_large(sys.argv[3], out, net, output_dtype=np.uint16)
"""


@pytest.fixture
def start_writer():
    """``start_writer(kind, out, *args) -> (process, first line)``: a child process that is
    writing ``out`` (``kind`` "file", "folder" or "predict"); the line names its partial."""
    import subprocess
    import sys

    started = []

    def start(kind: str, out, *args):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, kind, str(out), *map(str, args)],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        line = proc.stdout.readline().strip()
        assert line, f"the writer ended without starting to write (exit {proc.wait()})"
        return proc, line

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()

