"""Shared benchmark set-up: the malloc setting both sides of a comparison run under.

On this CPU every fresh large buffer is page-faulted in on each call, which can cost more
than the arithmetic (a 64 MB elementwise op: ~10 ms of work, ~40 ms of page faults).
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) makes malloc ask for transparent
huge pages, which removes most of that. It must be set before the process starts, so a
benchmark restarts itself once with it; CSBDeep (NumPy, TensorFlow) and isojax then run
in the same process under the same setting. ``--no-hugepages`` measures the default.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def maybe_reexec(no_hugepages: bool) -> None:
    """Restart this script once with the huge-page malloc setting, unless asked not to."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if no_hugepages or TUNABLE in tunables or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def describe() -> str:
    """The malloc setting in force, for the results table."""
    return f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
