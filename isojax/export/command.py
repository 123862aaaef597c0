"""The ``isojax export`` subcommand: its arguments and its run (kept out of :mod:`isojax.cli`).

Importing this module is light (argparse only); the export itself is imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_export_command"]


def _run(args: argparse.Namespace) -> int:
    from isojax.export.package import export_model

    export_model(args.model_dir, args.output, which=args.checkpoint, name=args.name,
                 authors=args.author or (), license_id=args.license, overwrite=args.overwrite)
    return 0


def add_export_command(commands) -> None:
    """Add ``export`` to the ``isojax`` subcommands.

    Args:
      commands: the ``argparse`` subparsers object of the ``isojax`` parser.
    """
    e = commands.add_parser(
        "export", help="write a model as a BioImage Model Zoo package (ONNX)",
        description="Write MODEL_DIR as a bioimage.io model package (spec 0.5): ONNX weights, "
        "rdf.yaml, test tensors, a cover and the documentation of how the network restores "
        "a stack. `isojax predict STACK --model NAME.bioimageio.zip` runs it. Needs the "
        "export extra: pip install 'isojax[export]'.")
    e.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="model folder written by `isojax train`")
    e.add_argument("-o", "--output", type=Path, required=True, metavar="NAME.bioimageio.zip",
                   help="the package to write")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="the checkpoint to export (default: best)")
    e.add_argument("--name", metavar="TEXT", help="the package's name (default: from "
                   "MODEL_DIR)")
    e.add_argument("--author", action="append", metavar="NAME",
                   help="an author of the model (repeat for several)")
    e.add_argument("--license", default="CC-BY-4.0", metavar="SPDX",
                   help="the licence of the weights, an SPDX identifier (default: CC-BY-4.0)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing package")
    e.set_defaults(func=_run)
