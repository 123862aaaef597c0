"""The public API: every exported name resolves, and the package installs its console script."""

import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import subprocess
import sys

import isojax
from isojax.errors import IsojaxInputError


def test_every_exported_name_resolves():
    for name in isojax.__all__:
        assert getattr(isojax, name) is not None, name


def test_options_are_keyword_only():
    # API convention (as in optax / dm_pix): arrays positional, options keyword-only.
    for fn in (
        isojax.degrade,
        isojax.measure,
        isojax.upsample,
        isojax.add_noise,
        isojax.predict_stack,
    ):
        params = inspect.signature(fn).parameters.values()
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert all(p.default is p.empty for p in params if p.kind is p.POSITIONAL_OR_KEYWORD), (
            fn,
            positional,
        )


def test_console_script_is_installed():
    eps = importlib.metadata.entry_points(group="console_scripts")
    assert any(ep.name == "isojax" and ep.value == "isojax.cli:main" for ep in eps)
    out = subprocess.run(
        [sys.executable, "-m", "isojax", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("psf", "train", "predict", "demo"):
        assert command in out.stdout


def test_the_predict_package_and_its_compatibility_module_export_one_api():
    import isojax.predict
    import isojax.predict_large

    for name in isojax.predict.__all__:
        assert getattr(isojax.predict, name) is not None, name
    # the old module path re-exports the very same objects as the package
    for name in isojax.predict_large.__all__:
        assert getattr(isojax.predict_large, name) is getattr(isojax.predict.large, name), name
    assert isojax.predict.predict_large is isojax.predict_large.predict_large
    assert isojax.predict.predict_stack is isojax.predict_stack
    assert callable(isojax.predict.predict_large)  # the function, not a submodule


# ----------------------------------------------------------------------------------------
# The API conventions, over every public function of the package (as dm_pix tests its API)
#
# The rules, for every public function (a function defined in isojax, reached as a name
# in a public module's ``__all__``, or, without ``__all__``, a name not starting with "_";
# a public module is ``isojax`` or a submodule none of whose path parts starts with "_"):
#
# 1. Data first, options keyword-only: every parameter with a default is keyword-only,
#    and at most ``_MAX_POSITIONAL`` parameters (the data inputs) can be passed by position.
# 2. A PRNG ``key`` parameter is the first one (as in jax.random).
# 3. The docstring has an ``Args:`` section naming every parameter (several may share a
#    line, "a, b: ..."), a ``Returns:`` (or ``Yields:``) section unless the function is
#    annotated to return None (or to yield None, a context manager), and a ``Raises:``
#    section if its own source raises IsojaxInputError.
#
# Exceptions are listed with their reason; ``_PENDING`` lists the violations in files that
# other engineers were editing when this test was written, to be fixed there. An entry
# "isojax.mod.name" also matches the function ``name`` of a submodule of ``isojax.mod`` (so
# it survives a module turned into a package).

_MAX_POSITIONAL = 3

_EXCEPTIONS = {
    # (function, rule): reason
    ("isojax.demo_pipeline.demo", "positional-default"):
        "demo(folder) is the documented call (tests, `isojax demo --out`): the output folder "
        "is its one data argument, defaulting to ./isojax-demo as the CLI does",
    ("isojax.demo_series.demo_series", "positional-default"):
        "demo(folder) is the documented call (tests, `isojax demo --out`): the output folder "
        "is its one data argument, defaulting to ./isojax-demo-series as the CLI does",
    ("isojax.train.train", "positional-default"):
        "train(stack, psf, ...) is the documented call (examples, tests); the PSF is a data "
        "input, None only when calibrate_psf learns it",
    ("isojax.distributed.initialize", "positional-default"):
        "mirrors jax.distributed.initialize(coordinator_address, num_processes, process_id), "
        "whose arguments are all optional",
    ("isojax.cli.main", "positional-default"):
        "the console-script convention main(argv=None)",
    # the branches of pipeline.predict_file, called positionally there with its data
    ("isojax.predict.files.predict_stack_file", "positional-count"):
        "(stack_path, stack, apply_fn, meta) are four data inputs, no options: the path, its "
        "pixels, and the network with its configuration from load_predictor; "
        "pipeline.predict_file passes them positionally",
    ("isojax.predict.files.predict_volume_file", "positional-count"):
        "(stack_path, volume, apply_fn, meta): as predict_stack_file, with the volume opened "
        "for streaming; pipeline.predict_file passes them positionally",
    ("isojax.predict.files.stream_prediction", "positional-count"):
        "(stack_path, output, subsample, budget) are all required, no defaults; "
        "pipeline.predict_file passes the budget positionally",
}

_PENDING: set[tuple[str, str]] = set()  # none left: every public function follows the rules


def _public_modules():
    modules = [isojax]
    for info in pkgutil.walk_packages(isojax.__path__, "isojax."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def _public_functions() -> dict:
    """``"module.qualname" -> function`` for every public function, each once."""
    found = {}
    for module in _public_modules():
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n in vars(module) if not n.startswith("_")]
        for name in names:
            obj = getattr(module, name)
            if inspect.isfunction(obj) and obj.__module__.split(".")[0] == "isojax":
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def _matches(entry: str, qualname: str) -> bool:
    module, name = entry.rsplit(".", 1)
    q_module, q_name = qualname.rsplit(".", 1)
    return name == q_name and (q_module == module or q_module.startswith(module + "."))


def _listed(table, qualname: str, rule: str) -> bool:
    return any(r == rule and _matches(entry, qualname) for entry, r in table)


def _documented_names(doc: str) -> set[str]:
    """The parameter names an ``Args:`` section describes ("a, b: ..." names both)."""
    section = re.split(r"^\s*Args:\s*$", doc, maxsplit=1, flags=re.M)[1]
    section = re.split(r"^\S", section, maxsplit=1, flags=re.M)[0]  # up to the next section
    names = set()
    for line in section.splitlines():
        m = re.match(r"^\s+([\w*]+(?:\s*,\s*[\w*]+)*)\s*(?:\([^)]*\))?:", line)
        if m:
            names.update(n.strip().lstrip("*") for n in m.group(1).split(","))
    return names


def _violations(qualname: str, fn) -> list[tuple[str, str]]:
    """``(rule, detail)`` for each rule ``fn`` breaks."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    out = []
    defaults = [p.name for p in positional if p.default is not p.empty]
    if defaults:
        out.append(("positional-default", f"make {defaults} keyword-only"))
    if len(positional) > _MAX_POSITIONAL:
        out.append(("positional-count", f"{[p.name for p in positional]} can be positional"))
    if "key" in sig.parameters and params[0].name != "key":
        out.append(("key-first", "the PRNG key must come first"))
    doc = inspect.getdoc(fn) or ""
    named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if named:
        missing = named if "Args:" not in doc else sorted(set(named) - _documented_names(doc))
        if missing:
            out.append(("args", f"Args: does not describe {missing}"))
    # None, or a generator/context manager yielding None ("Iterator[None]" as a string
    # under ``from __future__ import annotations``, else a typing object)
    returns_nothing = re.fullmatch(r"None|([\w.]+\.)?(Iterator|Generator)\[None.*\]",
                                   str(sig.return_annotation)) is not None
    if not returns_nothing and "Returns:" not in doc and "Yields:" not in doc:
        out.append(("returns", "no Returns: section"))
    if re.search(r"raise IsojaxInputError\b", inspect.getsource(fn)) and "Raises:" not in doc:
        out.append(("raises", "raises IsojaxInputError but has no Raises: section"))
    return out


def test_every_public_function_follows_the_api_conventions():
    functions = _public_functions()
    assert len(functions) > 80, sorted(functions)  # the walk found the package
    broken = [
        f"{qualname}: {detail}"
        for qualname, fn in sorted(functions.items())
        for rule, detail in _violations(qualname, fn)
        if not _listed(_EXCEPTIONS, qualname, rule) and not _listed(_PENDING, qualname, rule)
    ]
    assert not broken, "\n".join(broken)


def test_the_api_exception_lists_are_not_stale():
    # every listed exception and pending violation still names a function that breaks
    # that rule: a fixed one must leave the list
    functions = _public_functions()
    broken = {(q, rule) for q, fn in functions.items() for rule, _ in _violations(q, fn)}
    for entry, rule in [*_EXCEPTIONS, *_PENDING]:
        assert any(r == rule and _matches(entry, q) for q, r in broken), (entry, rule)


def test_the_api_checker_catches_each_rule():
    # the checker itself: a function breaking every rule is reported for each of them
    def bad(x, y, z, w, scale=1.0, key=None):
        """No sections."""
        raise IsojaxInputError("x")

    def good(key, x, *, scale: float = 1.0) -> None:
        """Fine.

        Args:
          key, x: a key and an array.
          scale (float): a factor.

        Raises:
          IsojaxInputError: never, in fact.
        """
        raise IsojaxInputError("x")

    rules = {rule for rule, _ in _violations("m.bad", bad)}
    assert rules == {"positional-default", "positional-count", "key-first", "args",
                     "returns", "raises"}
    assert _violations("m.good", good) == []
    assert _matches("isojax.train.loss_fn", "isojax.train.loop.loss_fn")
    assert not _matches("isojax.train.loss_fn", "isojax.trainer.loss_fn")
