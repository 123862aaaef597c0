"""PSF self-calibration on specimens that isojax's training simulator did not make.

An independent generator (this file only: scipy.ndimage, not :mod:`isojax.simulate`)
draws isotropic specimens on a fine grid: sparse points (beads), dense textures (a
multi-scale log-normal random field), thin curved sheets (membranes), random filaments
(Gaussian-blurred line segments) and filaments with textured nuclei; and one real
specimen, ``neuron``, built from the XY planes of the widefield Purkinje-neuron stack that
flowdec's PyPI wheel ships (:func:`neuron`; read from the wheel, never stored here). Each is blurred in
3D by a Gaussian PSF (lateral sigma 1 px, axial sigma sqrt(1 + w^2): the additional axial
width w is the truth), sampled every ``s`` px along Z (random phase), and recorded with
Poisson noise and read noise. ``isojax.calibrate.fit_psf`` (defaults, Gaussian family)
then recovers w from each stack, from two starts.

Experiment 1 (default): the grid, one row per cell, to ``bench/calibration_grid.md``.
Experiment 2 (``--profile``): the objective's profile over the width on one stack, with
the old noise model (each side gets the other's noise) and the new one.
Experiment 3 (``--timing``): time to calibrate a 64x512x512 stack.

    python examples/calibration_experiments.py                 # the grid (about an hour)
    python examples/calibration_experiments.py --quick         # a few cells
    python examples/calibration_experiments.py --profile --timing --no-grid
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tifffile
from scipy import ndimage as ndi

from isojax.calibrate import (
    fit_psf,
    prepare_spectra,
    psf_from_params,
    psf_sigma,
    search,
    spectra,
)
from isojax.calibrate.fit import _continuous_of_gaussian

FWHM = math.sqrt(8 * math.log(2))
SIGMA_LATERAL = 1.0
# photons at the 99.9th percentile of the blurred specimen, background photons, read noise
NOISE = {"moderate": dict(photons=500.0, background=10.0, read_noise=2.0),
         "high": dict(photons=50.0, background=5.0, read_noise=2.0)}


# ---- the independent specimen generator ------------------------------------------------

def _directions(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def filaments(rng, shape, thickness=0.7):
    """Random straight segments (20-80 px, isotropic directions), blurred to ~0.7 px."""
    vol = np.zeros(shape, np.float32)
    n = max(8, int(np.prod(shape) / 6000))
    for c, d, length in zip(rng.uniform(0, shape, (n, 3)), _directions(rng, n),
                            rng.uniform(20, 80, n), strict=True):
        t = np.arange(-length / 2, length / 2, 0.5)
        p = np.round(c + t[:, None] * d).astype(int)
        p = p[np.all((p >= 0) & (p < shape), axis=1)]
        np.add.at(vol, (p[:, 0], p[:, 1], p[:, 2]), rng.uniform(0.5, 1.5))
    return ndi.gaussian_filter(vol, thickness)


def nuclei(rng, shape):
    """Spheres of radius 8-16 px with soft edges, filled with a fine random texture."""
    tex = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
    tex = np.clip(1 + 2.5 * tex / tex.std(), 0, None)
    vol = np.zeros(shape, np.float32)
    for _ in range(max(4, int(np.prod(shape) / 40000))):
        c, r = rng.uniform(0, shape), rng.uniform(8, 16)
        lo = np.maximum(np.floor(c - r - 6).astype(int), 0)
        hi = np.minimum(np.ceil(c + r + 6).astype(int), shape)
        zz, yy, xx = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in
                                   zip(lo, hi, strict=True)], indexing="ij")
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += rng.uniform(0.5, 1.0) / (1 + np.exp((d - r) / 0.8))
    return vol * tex


def points(rng, shape, density=2e-4):
    """Sparse bead-like points (2 per 10^4 voxels)."""
    vol = np.zeros(shape, np.float32)
    n = int(np.prod(shape) * density)
    np.add.at(vol, tuple(rng.integers(0, k, n) for k in shape), rng.uniform(0.5, 1.5, n))
    return ndi.gaussian_filter(vol, 0.5)


def sheets(rng, shape, n=12):
    """Thin (0.6 px) gently curved discs of radius 20-50 px at random orientations."""
    zz, yy, xx = np.meshgrid(*[np.arange(k, dtype=np.float32) for k in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for u in _directions(rng, n):
        c = rng.uniform(0, shape)
        dz, dy, dx = zz - c[0], yy - c[1], xx - c[2]
        dist = u[0] * dz + u[1] * dy + u[2] * dx
        rr = dz**2 + dy**2 + dx**2 - dist**2
        dist = dist + 0.01 * rr * rng.uniform(-1, 1)
        vol += rng.uniform(0.5, 1.0) * np.exp(-0.5 * (dist / 0.6) ** 2) * (rr < rng.uniform(20, 50) ** 2)
    return vol


def textured(rng, shape):
    """Dense texture: exp of a multi-scale (1-8 px) Gaussian random field."""
    w = rng.normal(size=shape).astype(np.float32)
    f = sum(ndi.gaussian_filter(w, s) * s for s in (1.0, 2.0, 4.0, 8.0))
    return np.exp(0.7 * (f - f.mean()) / f.std())


# ---- a real fluorescence stack: the Purkinje neuron that flowdec's wheel ships ------------

#: The file inside the flowdec wheel (Apache-2.0): EPFL BIG's widefield "Purkinje neuron"
#: deconvolution data set, downsampled to 25%, (50, 256, 256) float32, no voxel size.
NEURON_MEMBER = "flowdec/datasets/neuron-25pct/data.tif"
NEURON_CACHE = Path(os.environ.get("ISOJAX_GRID_CACHE", Path.home() / ".cache" / "isojax-grid"))
_NEURON: dict[str, np.ndarray] = {}
#: Plane crops summed into the symmetric tile of :func:`neuron`.
NEURON_TILES = 3


def _neuron_wheel(source: Path | None) -> Path:
    """The flowdec wheel: ``source`` (a .whl), one in the cache, or ``pip download``."""
    if source is not None:
        return source
    found = sorted(NEURON_CACHE.glob("flowdec-*.whl"))
    if not found:
        NEURON_CACHE.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "flowdec==1.1.0", "-d", str(NEURON_CACHE)], capture_output=True)
        found = sorted(NEURON_CACHE.glob("flowdec-*.whl"))
        if r.returncode or not found:
            raise SystemExit("the 'neuron' specimen needs flowdec's wheel: pip download "
                             "--no-deps flowdec==1.1.0 failed; pass --neuron PATH.whl")
    return found[-1]


def neuron_planes(source: Path | None = None) -> np.ndarray:
    """The real stack's in-focus XY planes, ``(k, 256, 256)`` float32 (see :func:`neuron`).

    ``source``: the wheel, or the extracted ``data.tif``. The 8 planes with the most power
    above a quarter of the lateral Nyquist frequency are kept (the arbor's focal planes)."""
    if "planes" not in _NEURON:
        src = _neuron_wheel(source)
        if src.suffix == ".whl":
            with zipfile.ZipFile(src) as z:
                a = tifffile.imread(io.BytesIO(z.read(NEURON_MEMBER)))
        else:
            a = tifffile.imread(src)
        a = np.asarray(a, np.float32)
        hp = a - ndi.gaussian_filter(a, (0, 2, 2))
        keep = np.sort(np.argsort((hp**2).mean(axis=(1, 2)))[-8:])
        # rows 0-191: the dendritic arbor, without the saturated soma (rows ~200-235)
        _NEURON["planes"] = a[keep, :192] - np.percentile(a, 1)
    return _NEURON["planes"]


def _tile(rng, planes, shape):
    """A crop of ``shape`` (2D) from a random plane, randomly transposed and flipped;
    mirrored (reflect) where the crop is longer than the plane."""
    p = planes[rng.integers(0, len(planes))]
    p = p.T if rng.integers(0, 2) else p
    p = p[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
    pad = [(0, max(0, n - k)) for n, k in zip(shape, p.shape, strict=True)]
    p = np.pad(p, pad, mode="reflect") if any(b for _, b in pad) else p
    o = [int(rng.integers(0, k - n + 1)) for n, k in zip(shape, p.shape, strict=True)]
    return p[o[0]:o[0] + shape[0], o[1]:o[1] + shape[1]]


def neuron(rng, shape):
    """Real content, exchange-symmetric by construction: ``V(z, y, x) = T(z, x) + T(z, y) +
    T(y, x)`` with one symmetric tile ``T = sum_i (P_i + P_i^T)`` of side ``max(shape)``,
    ``P_i`` (:data:`NEURON_TILES` of them) cut from the real stack's in-focus XY planes
    (:func:`_tile`); ``V`` is the corner of that cube.

    The stack itself is not an isotropic specimen: a Purkinje cell's dendritic arbor is
    flat, it lies in the XY plane (its XZ projection is a thin slab), and the widefield
    axial blur is much wider than the lateral one, so "resampling Z" would not make it
    isotropic. Its XY planes are (near) isotropic within the plane, and they are all this
    uses: the stack's own axial blur never enters. On a cube ``V`` is unchanged by any
    permutation of the axes, so its Z lines are exactly its X (and Y) lines, which is
    what the spectral objective compares; the corner of a cube (fewer planes than the
    side) keeps that only on average. A first version summed independent tiles
    ``A(z, x) + B(z, y) + C(y, x)``: symmetric only on average over stacks, its z and x
    spectra differed by factors 0.1-8 at low frequencies within one stack."""
    planes = neuron_planes()
    n = max(shape)
    t = np.zeros((n, n), np.float32)
    for _ in range(NEURON_TILES):
        p = _tile(rng, planes, (n, n))
        t += p + p.T
    nz, ny, nx = shape
    return t[:nz, None, :nx] + t[:nz, :ny, None] + t[None, :ny, :nx]


KINDS = {"points": points, "textured": textured, "sheets": sheets, "filaments": filaments,
         "filaments+nuclei": lambda r, s: filaments(r, s) + 0.5 * nuclei(r, s), "neuron": neuron}


def acquire(rng, vol, *, subsample: int, width: float, noise: str | None):
    """Blur in 3D (lateral sigma 1 px, axial sqrt(1 + width^2)), keep every s-th plane
    from a random phase, scale, add Poisson and read noise (``noise=None``: none)."""
    sa = math.sqrt(SIGMA_LATERAL**2 + width**2)
    b = ndi.gaussian_filter(vol.astype(np.float64), (sa, SIGMA_LATERAL, SIGMA_LATERAL),
                            mode="wrap")[int(rng.integers(0, subsample))::subsample]
    b = b / np.percentile(b, 99.9)
    if noise is None:
        return b.astype(np.float32)
    p = NOISE[noise]
    lam = np.clip(b, 0, None) * p["photons"] + p["background"]
    return (rng.poisson(lam) + rng.normal(0, p["read_noise"], lam.shape)).astype(np.float32)


def make_stack(kind, seed, *, subsample: int, width: float, noise, planes=32, lateral=128):
    rng = np.random.default_rng(seed)
    vol = KINDS[kind](rng, (planes * subsample, lateral, lateral))
    return acquire(rng, vol, subsample=subsample, width=width, noise=noise)


# ---- experiments -------------------------------------------------------------------------

def lateral_for(s, kind=None):
    """Lateral size: 128 px (256 at s = 10: 2 steps, sigma 20 px, must fit the grid); the
    neuron specimen is a cube of 32 s px (its exchange symmetry is exact on a cube)."""
    if kind == "neuron":
        return 32 * int(s)
    return 128 if s <= 6 else 256


def grid(kinds, factors, fractions, noises, log, rows_file=None, *, run_factors=None,
         run_noises=None, starts=(0.5, 2.0)):
    """One row per (specimen, factor, width, noise, start); each row is also appended to
    ``rows_file`` (JSON lines) as soon as it is done. Seeds follow the cells' order in the
    full lists; ``run_factors`` / ``run_noises`` (subsets) run only some of those cells,
    with the same seeds (the same stacks) as the full grid."""
    rows = []
    seed = 0
    for kind in kinds:
        for s in factors:
            for frac in fractions:
                w = frac * s
                for noise in noises:
                    seed += 1
                    if (run_factors is not None and s not in run_factors) or (
                            run_noises is not None and noise not in run_noises):
                        continue
                    stack = make_stack(kind, seed, subsample=s, width=w, noise=noise,
                                       lateral=lateral_for(s, kind))
                    n_lat = stack.shape[-1]
                    for start in starts:  # x the true FWHM, kept in the valid range
                        fw = float(np.clip(start * w * FWHM, 0.5, n_lat / 8))
                        t0 = time.perf_counter()
                        try:
                            _, rep = fit_psf(jax.random.key(1), stack, subsample=float(s),
                                             init_fwhm=fw)
                            iv = rep.interval
                            slabs = rep.slab_sigmas
                            lo_c, hi_c = rep.continuous_interval_px()
                            row = dict(sig=rep.sigma_px, lo=iv.low, hi=iv.high,
                                       sig_c=rep.sigma_continuous_px, lo_c=lo_c, hi_c=hi_c,
                                       ident=iv.identifiable, model_error=search.MODEL_ERROR,
                                       slabs=None if slabs is None else [float(v) for v in slabs])
                        except ValueError as e:  # report, do not drop
                            log(f"  failed: {e}")
                            row = dict(sig=math.nan, lo=math.nan, hi=math.nan, sig_c=math.nan,
                                       lo_c=math.nan, hi_c=math.nan, ident=False)
                        row.update(kind=kind, s=s, w=w, noise=noise, start=start, fwhm0=fw,
                                   dt=time.perf_counter() - t0, shape=tuple(stack.shape))
                        rows.append(row)
                        log(_row(row))
                        if rows_file is not None:
                            with open(rows_file, "a") as fh:
                                fh.write(json.dumps({**row, "shape": list(row["shape"])}) + "\n")
    return rows


def _load_rows(path: Path) -> list[dict]:
    """Rows from a run's ``.jsonl``, or from the table lines of its log (``| ... |``)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for line in path.read_text().splitlines():
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) == 13 and c[1][:1].isdigit():
            raise SystemExit(f"{path}: a table with continuous widths; merge its rows file "
                             f"({path.with_suffix('.rows.jsonl')}) instead")
        if len(c) != 12 or not c[1][:1].isdigit():
            continue
        lo, hi = (float(v) for v in c[7].strip("[]").split(","))
        rows.append(dict(kind=c[0], s=int(c[1]), w=float(c[2]), noise=c[3],
                         start=float(c[4].split("x")[0]),
                         fwhm0=float(c[4].split("(")[1].split()[0]), sig=float(c[5]),
                         lo=lo, hi=hi, ident=c[9].startswith("yes"), dt=float(c[10]),
                         shape=[int(v) for v in c[11].strip("()").split(",")]))
    return rows


def _widen(r):
    """Rows from runs before the interval got its model-error floor (search.MODEL_ERROR):
    apply the floor now, exactly as search.profile_interval does (no refit needed)."""
    if "model_error" in r or not math.isfinite(r["sig"]):
        return r
    f = search.MODEL_ERROR
    best = 0.0 if r["sig"] <= search.DELTA_SIGMA else r["sig"]
    lo, hi = min(r["lo"], best * (1 - f)), max(r["hi"], best * (1 + f))
    ok = lo > 0 and math.isfinite(hi) and hi <= search.MAX_INTERVAL_RATIO * lo
    return {**r, "lo": lo, "hi": hi, "ident": bool(ok), "model_error": f, "widened": True}


def _family_taps(sigma: float) -> int:
    """The kernel length the merged rows' continuous widths were computed on (+-4 sigma,
    at least 9 taps)."""
    return 2 * math.ceil(4.0 * max(sigma, 1.0)) + 1


def _cont_of_param(sigma: float) -> float:
    """continuous_sigma of the Gaussian family's kernel of width ``sigma`` (px)."""
    return _continuous_of_gaussian(sigma, _family_taps(sigma) if math.isfinite(sigma) else 1)


def _param_of_moment(m: float) -> float:
    """The Gaussian family's width whose kernel has second-moment width ``m`` (bisection in
    log width; the report's ``sigma_px`` is the second moment, ``psf_sigma``)."""
    def moment(p):
        psf = psf_from_params("gaussian", {"log_sigma": np.float32(math.log(p))},
                              taps=_family_taps(p))
        return float(psf_sigma(psf))

    lo, hi = math.log(1e-3), math.log(max(4.0 * m, 1.0))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if moment(math.exp(mid)) < m else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def _continuous(r):
    """Rows from runs before the report had continuous widths (``sigma_continuous_px``):
    the same mapping now, from the kernel's width and the interval (no refit)."""
    if "sig_c" in r:
        return r
    ok = math.isfinite(r["sig"])
    sig_c = _cont_of_param(_param_of_moment(r["sig"])) if ok and r["sig"] > 0 else (
        0.0 if ok else math.nan)
    return {**r, "sig_c": sig_c, "lo_c": _cont_of_param(r["lo"]) if ok else math.nan,
            "hi_c": _cont_of_param(r["hi"]) if ok else math.nan, "continuous_at_merge": True}


def _cell(r):
    return (r["kind"], int(r["s"]), round(float(r["w"]), 6), r["noise"])


def _stacks(rows):
    """Rows grouped into stacks: consecutive rows of one cell with different starts (one
    cell can hold several stacks: --quick draws other seeds)."""
    groups = []
    for r in rows:
        g = groups[-1] if groups else None
        if g and _cell(g[0]) == _cell(r) and all(x["start"] != r["start"] for x in g):
            g.append(r)
        else:
            groups.append([r])
    return groups


def _update(rows, new):
    """``rows`` with the last stack of every cell that ``new`` has (the full grid's seed;
    an earlier stack of the cell is another seed) replaced by ``new``'s rows; cells only in
    ``new`` at the end."""
    fresh = {}
    for r in new:
        fresh.setdefault(_cell(r), []).append(r)
    groups = _stacks(rows)
    last = {_cell(g[0]): i for i, g in enumerate(groups)}
    out = []
    for i, g in enumerate(groups):
        c = _cell(g[0])
        out += fresh[c] if c in fresh and last[c] == i else g
    return out + [r for c, rs in fresh.items() if c not in last for r in rs]


def _inside(r):
    return r["lo_c"] <= r["w"] <= r["hi_c"]


def _err(r):
    return r["sig_c"] / r["w"] - 1


def _row(r):
    err = _err(r)
    inside = _inside(r)
    flag = ""
    if r["ident"] and abs(err) > 0.10:
        flag = " **(>10%)**"
    if r["w"] > r["s"] / 2 and r["sig_c"] < r["s"] / 4:
        flag += " **(collapse)**"
    if not r["ident"] and not inside:
        flag += " **(truth outside)**"
    return (f"| {r['kind']} | {r['s']:g} | {r['w']:.3g} | {r['noise']} | {r['start']:g}x "
            f"({r['fwhm0']:.3g} px) | {r['sig_c']:.3f} | {r['sig']:.3f} | {100 * err:+.1f}% | "
            f"[{r['lo_c']:.3g}, {r['hi_c']:.3g}] | {'yes' if inside else 'no'} | "
            f"{'yes' if r['ident'] else 'NO'}{flag} | {r['dt']:.1f} | {tuple(r['shape'])} |")


def grid_table(rows):
    """The table and its summary, scored on the continuous widths (``sig_c``: the
    microscope's, and this generator's, blur is a continuous Gaussian; ``sig`` is the
    fitted kernel's second moment, wider at sub-pixel widths)."""
    rows = [_continuous(r) for r in rows]
    out = ["| specimen | subsample | true sigma (px) | noise | start (FWHM) | recovered sigma "
           "(continuous, px) | kernel sigma (px) | error | 95% interval (continuous, px) | "
           "truth inside | identifiable | time (s) | stack (z, y, x) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out += [_row(r) for r in rows]
    # the summary counts stacks, each once: its first row (the starts agree)
    stacks = [g[0] for g in _stacks(rows)]
    mod = [r for r in stacks if r["noise"] == "moderate"]
    ident = [r for r in mod if r["ident"]]
    within = sum(abs(_err(r)) <= 0.10 for r in ident)
    collapse = sum(r["w"] > r["s"] / 2 and r["sig_c"] < r["s"] / 4 and r["ident"]
                   for r in stacks)
    collapse_any = sum(r["w"] > r["s"] / 2 and r["sig_c"] < r["s"] / 4 for r in stacks)
    unid = [r for r in stacks if not r["ident"]]
    covered = sum(_inside(r) for r in unid)
    cover_all = sum(_inside(r) for r in stacks)
    cell = ("kind", "s", "w", "noise")
    pairs = [(a["sig_c"], b["sig_c"]) for a, b in itertools.pairwise(rows)
             if a["start"] == 0.5 and b["start"] == 2.0 and all(a[k] == b[k] for k in cell)]
    spread = max((abs(a - b) / max(a, b, 1e-9) for a, b in pairs), default=math.nan)
    per_kind = []
    for kind in dict.fromkeys(r["kind"] for r in stacks):
        k_id = [r for r in ident if r["kind"] == kind]
        k_mod = [r for r in mod if r["kind"] == kind]
        k_un = [r for r in unid if r["kind"] == kind]
        per_kind.append(
            f"  - {kind}: {sum(abs(_err(r)) <= 0.10 for r in k_id)} of "
            f"{len(k_id)} identifiable moderate-noise cells within 10% ({len(k_mod)} "
            f"moderate); unidentifiable {len(k_un)}, truth inside "
            f"{sum(_inside(r) for r in k_un)}")
    out += ["", f"Summary ({len(stacks)} stacks, each counted once):", "",
            f"- moderate noise: {len(ident)} of {len(mod)} cells called identifiable; "
            f"{within} of those ({100 * within / max(len(ident), 1):.0f}%) within 10% "
            "(target: >= 95%).",
            f"- cells where a width above half the step came back below a quarter of it: "
            f"{collapse} reported as identifiable, {collapse_any} in all (target: 0 "
            "reported as a measurement).",
            f"- cells called unidentifiable: {len(unid)}; truth inside their interval in "
            f"{covered} (target: all).",
            f"- truth inside the 95% interval, all cells: {cover_all} of {len(stacks)}.",
            f"- largest relative difference between the two starts of one stack: "
            f"{100 * spread:.2g}%.", "- per specimen:", *per_kind]
    return "\n".join(out)


def profile_experiment(log, kind="filaments+nuclei", s=3, w=4.2, seed=1):
    """The objective over the width, old noise model (each side the other's noise) vs new."""
    stack = make_stack(kind, seed, subsample=s, width=w, noise="moderate")
    target, segment = prepare_spectra(jax.random.key(0), stack, subsample=float(s))
    sig = np.array([search.DELTA_SIGMA, 0.5, 1.0, 1.27, 1.5, 2.0, 3.0, 4.0, 4.2, 5.0, 6.0, 8.0])
    taps = search.grid_taps(stack.shape[-1])
    new, _ = search.width_profile(target, sig, subsample=float(s), segment=segment, taps=taps)
    v = target.noise_var

    def old_one(log_sigma):  # the noise model before this change
        psf = psf_from_params("gaussian", {"log_sigma": log_sigma}, taps=taps)
        h = spectra._axial_profile(psf)
        obs = spectra.observed_spectrum(psf, target, segment=segment)
        syn = spectra.synthetic_spectrum(psf, target, subsample=float(s), segment=segment)
        n_h = spectra._noise_spectrum(psf, target.lines.shape[-1], float(s), target.frequencies)
        return search._fit_nuisance(jnp.log(obs + v * n_h), syn + v * jnp.sum(h**2))

    old = [float(jax.jit(old_one)(jnp.float32(math.log(x)))[0]) for x in sig]
    lines = [f"Stack: {kind}, subsample {s}, true sigma {w} px, moderate noise, shape "
             f"{stack.shape}. Objective with gain and floor fitted at each width "
             "(sigma 0 = a delta; the default start was FWHM = one step, sigma 1.27 px).\n",
             "| sigma (px) | objective, old noise model | objective, new |", "|---|---|---|"]
    lines += [f"| {0 if x <= search.DELTA_SIGMA else x:g} | {o:.4f} | {n:.4f} |"
              for x, o, n in zip(sig, old, new, strict=True)]
    log("\n".join(lines))
    return "\n".join(lines)


def timing(log):
    s, w = 4, 3.0
    stack = make_stack("points", 99, subsample=s, width=w, noise="moderate",
                       planes=64, lateral=512)  # the cheapest specimen to draw at this size
    lines = []
    for i in range(2):  # the first includes compilation
        t0, c0 = time.perf_counter(), time.process_time()
        _, rep = fit_psf(jax.random.key(1), stack, subsample=float(s))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        lines.append(f"| {stack.shape} | {s:g} | {w:g} | {'first (with compilation)' if i == 0 else 'second'} "
                     f"| {rep.sigma_px:.3f} | [{rep.interval.low:.3g}, {rep.interval.high:.3g}] "
                     f"| {dt:.1f} | {cpu:.1f} | {os.getloadavg()[0]:.1f} |")
        log(lines[-1])
    return "\n".join(["| stack | subsample | true sigma | call | recovered | interval | wall s "
                      "| CPU s (all threads) | load average |",
                      "|---|---|---|---|---|---|---|---|---|", *lines])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few cells")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--factors", nargs="+", type=int, default=[2, 3, 4, 6, 10])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0],
                    help="true widths as fractions of the step")
    ap.add_argument("--noises", nargs="+", default=list(NOISE), choices=list(NOISE))
    ap.add_argument("--run-factors", nargs="+", type=int, default=None,
                    help="run only these factors (seeds as in the full grid)")
    ap.add_argument("--run-noises", nargs="+", default=None, choices=list(NOISE),
                    help="run only these noise levels (seeds as in the full grid)")
    ap.add_argument("--starts", nargs="+", type=float, default=[0.5, 2.0],
                    help="starting FWHMs, times the true one")
    ap.add_argument("--profile", action="store_true", help="old vs new objective profile")
    ap.add_argument("--timing", action="store_true", help="time a 64x512x512 calibration")
    ap.add_argument("--out", type=Path, default=Path("bench/calibration_grid.md"))
    ap.add_argument("--neuron", type=Path, default=None, metavar="WHEEL_OR_TIF",
                    help="flowdec's wheel (or its neuron-25pct/data.tif) for the 'neuron' "
                         "specimen; default: a cached wheel, else pip download")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="ROWS.json",
                    help="no new cells: tabulate the rows of earlier runs (their .json)")
    ap.add_argument("--update", nargs="+", type=Path, default=[], metavar="ROWS.jsonl",
                    help="with --merge: rows that replace the merged rows of the same cell "
                         "(specimen, factor, width, noise), every start")
    args = ap.parse_args(argv)
    if "neuron" in args.kinds and not args.merge and not args.no_grid:
        neuron_planes(args.neuron)

    def log(m):
        print(m, flush=True)

    parts = ["# PSF self-calibration on specimens the training simulator did not make\n",
             f"Command: `python {' '.join(sys.argv)}`\n",
             f"Machine: shared 2-core CPU (other jobs running), jax {jax.__version__}; "
             "timings are indicative.\n",
             "Specimens from the independent generator in examples/calibration_experiments.py "
             "(scipy.ndimage; not isojax.simulate). Lateral sigma 1 px; the additional axial "
             "PSF is a Gaussian of sigma w (the truth). Noise 'moderate' = 500 photons at the "
             "99.9th percentile + 10 background, Poisson, read noise 2 photons; 'high' = 50 "
             "photons + 5 background, read noise 2. Stacks of 32 planes x 128 x 128 px "
             "(256 x 256 at subsample 10, so that two steps fit the search), made from 32 s "
             "fine planes. fit_psf defaults (Gaussian family, 40 L-BFGS iterations); starts "
             "at 0.5x and 2x the true FWHM (clipped to [0.5, n/8] px), "
             "which now only extend the global search.\n",
             "Real specimen 'neuron': the widefield Purkinje-neuron stack that the PyPI wheel of "
             "flowdec 1.1.0 ships (flowdec/datasets/neuron-25pct/data.tif, EPFL BIG "
             "deconvolution data, 25%, 50 x 256 x 256, no voxel size in the file); its 8 "
             "sharpest XY planes (rows 0-191, without the saturated soma) make one symmetric "
             "tile T and the volume T(z, x) + T(z, y) + T(y, x) (`neuron`: why, in its "
             "docstring); then the same blur, sampling and noise as the others.\n"]
    if args.profile:
        parts += ["## The objective's profile over the width\n", profile_experiment(log), ""]
    if args.merge:
        rows = [_widen(r) for f in args.merge for r in _load_rows(f)]
        rows = _update(rows, [r for f in args.update for r in _load_rows(f)])
        rows = [_continuous(r) for r in rows]
        parts += ["## Recovered additional axial width, per cell\n", grid_table(rows), ""]
        merged = args.out.with_suffix(".rows.jsonl")  # what a later --merge reads
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.write_text("".join(json.dumps({**r, "shape": list(r["shape"])}) + "\n"
                                  for r in rows))
    elif not args.no_grid:
        if args.quick:
            rows = grid(["filaments+nuclei"], [3, 10], [0.25, 2.0], ["moderate"], log)
        else:
            rows = grid(args.kinds, args.factors, args.fractions, args.noises, log,
                        rows_file=args.out.with_suffix(".jsonl"), run_factors=args.run_factors,
                        run_noises=args.run_noises, starts=tuple(args.starts))
        parts += ["## Recovered additional axial width, per cell\n", grid_table(rows), ""]
    if args.timing:
        parts += ["## Time to calibrate\n", timing(log), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
