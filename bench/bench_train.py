"""Training throughput of the isojax CARE U-Net against CSBDeep's CARE (TensorFlow), on CPU.

Measures patches per second of one optimiser step (Adam, MAE loss, CARE's 2D default U-Net:
depth 2, 32 first filters, 5x5 kernels, residual) after compilation/warm-up, median over
``--steps`` repeats. All candidates run in this one process, interleaved step by step, so that
load from other processes on a shared machine hits them alike. CSBDeep is measured only when
``csbdeep`` and ``tensorflow`` import (``pip install tensorflow-cpu``, the ``bench`` extra).

Candidates:
  isojax xla-grad      ``conv_impl="xla"``: lax.conv with XLA's own gradient, default compiler.
  isojax custom-vjp    ``conv_impl="custom"``: :func:`isojax.unet.conv2d`, default compiler.
  isojax +cpu-options  custom conv, step compiled with ``isojax.unet.CPU_COMPILER_OPTIONS``.
  isojax train_step    the step ``isojax.train.train`` runs (``make_train_step``: custom conv,
                       CPU options, its warm-up/cosine Adam schedule and MAE loss), float32.
  isojax train_step bf16  the same with ``TrainConfig(compute_dtype="bfloat16")``.
  csbdeep (tf)         ``CARE(Config('YX')).keras_model.train_on_batch``.

Unless ``--no-hugepages``, the script restarts itself once with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) so that large buffers use transparent
huge pages; this cuts page-fault time for every framework measured here alike.

Usage: ``python bench/bench_train.py --steps 10 --batch-size 16 --patch-size 128``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import time

from _env import TUNABLE, maybe_reexec


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per candidate (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--batch-size", type=int, default=16, help="patches per step")
    p.add_argument("--patch-size", type=int, default=128, help="patch side in pixels (y = x)")
    p.add_argument("--no-csbdeep", action="store_true", help="skip the TensorFlow baseline")
    p.add_argument(
        "--no-hugepages", action="store_true", help=f"do not restart with GLIBC_TUNABLES={TUNABLE}"
    )
    p.add_argument("--only", default="", help="comma-separated candidate names to run")
    args = p.parse_args()
    for name in ("steps", "batch_size", "patch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.patch_size % 4:
        raise SystemExit("--patch-size must be divisible by 4 (2**depth for depth 2)")
    return args


def _isojax_candidates(args, x, y):
    import jax
    import jax.numpy as jnp
    import optax

    from isojax.unet import CPU_COMPILER_OPTIONS, UNetConfig, apply_unet, init_unet

    def make(conv_impl: str, compiler_options: dict | None):
        config = UNetConfig(conv_impl=conv_impl)
        graphdef, params = init_unet(jax.random.key(0), config)
        tx = optax.adam(4e-4)  # CARE's default learning rate

        def loss_fn(p, xb, yb):
            return jnp.mean(jnp.abs(apply_unet(graphdef, p, xb) - yb))

        def train_step(state, batch):
            p, opt_state = state
            loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
            updates, opt_state = tx.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), {"loss": loss}

        step = jax.jit(train_step, donate_argnums=0, compiler_options=compiler_options)
        holder = {"state": (params, tx.init(params))}
        batch = (jnp.asarray(x), jnp.asarray(y))

        def run() -> float:
            holder["state"], metrics = step(holder["state"], batch)
            jax.block_until_ready(holder["state"])
            return float(metrics["loss"])

        return run

    def make_real(compute_dtype: str):
        from isojax.train import TrainConfig, create_train_state, make_train_step

        net = UNetConfig()
        config = TrainConfig(steps=1000, batch_size=x.shape[0], compute_dtype=compute_dtype)
        graphdef, state = create_train_state(jax.random.key(0), net, config)
        step = make_train_step(graphdef, net, config)
        holder = {"state": state}
        batch = (jnp.asarray(x[..., 0]), jnp.asarray(y[..., 0]))

        def run() -> float:
            holder["state"], metrics = step(holder["state"], batch)
            jax.block_until_ready(holder["state"])
            return float(metrics["loss"])

        return run

    return {
        "isojax train_step": lambda: make_real("float32"),
        "isojax train_step bf16": lambda: make_real("bfloat16"),
        "isojax xla-grad": lambda: make("xla", None),
        "isojax custom-vjp": lambda: make("custom", None),
        "isojax +cpu-options": lambda: make("custom", CPU_COMPILER_OPTIONS),
    }


def _csbdeep_candidate(x, y):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from csbdeep.models import CARE, Config
    except Exception as e:  # ImportError, or TF/keras version errors raised at import
        print(f"csbdeep/tensorflow not usable ({type(e).__name__}: {e}); isojax only.")
        return {}

    def make():
        model = CARE(Config("YX", n_channel_in=1, n_channel_out=1), name=None, basedir=None)
        model.prepare_for_training()  # Adam(lr=4e-4), MAE loss: CARE's defaults
        keras_model = model.keras_model

        def run() -> float:
            out = keras_model.train_on_batch(x, y)  # loss, or [loss, *metrics]
            return float(out[0] if isinstance(out, list | tuple) else out)

        return run

    return {"csbdeep (tf)": make}


def main() -> None:
    args = _parse()
    maybe_reexec(args.no_hugepages)
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.patch_size, args.patch_size, 1)
    x = rng.random(shape, dtype=np.float32)
    y = (0.5 * x + 0.1 * rng.random(shape, dtype=np.float32)).astype(np.float32)

    factories = dict(_isojax_candidates(args, x, y))
    if not args.no_csbdeep:
        factories.update(_csbdeep_candidate(x, y))
    if args.only:
        wanted = set(args.only.split(","))
        factories = {k: v for k, v in factories.items() if k in wanted}

    runs = {}
    for name, make in factories.items():
        t0 = time.perf_counter()
        run = make()
        for _ in range(1 + args.warmup):  # first call compiles
            run()
        print(
            f"# {name}: built, compiled and warmed up in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        runs[name] = run

    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, run in runs.items():  # interleaved: load noise hits all candidates alike
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)

    print(
        f"\nbatch {args.batch_size}, patch {args.patch_size}x{args.patch_size}, "
        f"{args.steps} timed steps each, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
        f", cpus={os.cpu_count()}\n"
    )
    ref = "csbdeep (tf)" if "csbdeep (tf)" in times else next(iter(times))
    med = {name: float(np.median(t)) for name, t in times.items()}
    print(f"| candidate | median s/step | patches/s | ratio vs {ref} |")
    print("|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m:.3f} | {args.batch_size / m:.2f} | {med[ref] / m:.2f} |")
    print("\nall step times (s):")
    for name, t in times.items():
        print(f"  {name}: {' '.join(f'{v:.2f}' for v in t)}")


if __name__ == "__main__":
    main()
