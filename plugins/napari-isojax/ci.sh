#!/usr/bin/env bash
# napari-isojax CI: a venv beside the installed isojax, the plugin installed into it,
# `npe2 validate`, and the plugin's tests headless. Prints the time of each phase.
#
#   ISOJAX_NAPARI_VENV   the venv (default /tmp/isojax-napari-venv-ci; reused when present)
#
# Display: Qt's offscreen platform runs the widgets but gives vispy no OpenGL (Qt 6), so the
# screenshot test needs an X server: with no DISPLAY this script runs the tests on xcb inside
# Xvfb (`apt-get install xvfb libxcb-icccm4 libxcb-keysyms1`; Mesa's libgl1-mesa-dri renders),
# and falls back to QT_QPA_PLATFORM=offscreen (screenshot test skipped) where Xvfb is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${ISOJAX_NAPARI_VENV:-/tmp/isojax-napari-venv-ci}"
start=$SECONDS
phase() { echo "napari-isojax ci: $1: $(( SECONDS - t )) s"; t=$SECONDS; }
t=$SECONDS

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$venv"
fi
py="$venv/bin/python"
if ! "$py" -c "import napari, npe2, pytestqt, qtpy, PySide6" 2>/dev/null; then
    "$py" -m pip install -q "napari>=0.5" pyside6-essentials pytest-qt npe2
fi
"$py" -m pip install -q -e "$here" --no-deps
phase "venv and install"

# the isojax of this checkout, ahead of any installed one
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import isojax, napari_isojax; print('isojax', isojax.__file__)"
"$venv/bin/npe2" validate napari-isojax
phase "npe2 validate"

export JAX_PLATFORMS=cpu
# XLA's compilations kept with the venv: a later run reads most of them instead of compiling
# (a cold run compiles the training step about twice, calibration and simulation once)
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$venv/jax-cache}"
tests=("$py" -m pytest -q -p no:cacheprovider --durations=5 "$here/tests")
cd "$here"
if [ -n "${DISPLAY:-}" ]; then
    QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-xcb}" "${tests[@]}"
elif command -v xvfb-run >/dev/null; then
    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1280x1024x24" "${tests[@]}"
else
    echo "napari-isojax ci: no X server (xvfb-run): offscreen, the screenshot test is skipped"
    QT_QPA_PLATFORM=offscreen "${tests[@]}"
fi
phase "tests"
echo "napari-isojax ci: total $(( SECONDS - start )) s"
