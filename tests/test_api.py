"""The public API: every exported name resolves, and the package installs its console script."""

import importlib.metadata
import inspect
import subprocess
import sys

import isojax


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
