"""python -m cganraw.data [NAME ...] [--download]: fetch, verify and summarise datasets."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .. import cli
from .datasets import DATASETS, ENV_DATA_DIR, SPLITS, _spec, download, load, locate
from .sources import cache_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cganraw.data",
                                description="Fetch (with --download), verify and summarise datasets.")
    p.add_argument("names", nargs="*", default=["mnist"], metavar="NAME",
                   help="datasets (default: mnist): " + ", ".join(DATASETS))
    p.add_argument("--data-dir", default=None,
                   help=f"folder with the files (default: ${ENV_DATA_DIR}, then {cache_dir()})")
    p.add_argument("--download", action="store_true", default=False,
                   help=f"fetch missing files into {cache_dir()} (default: off)")
    p.add_argument("--keep-archive", action="store_true", default=False,
                   help="keep EMNIST's gzip.zip after extraction (default: deleted)")
    p.add_argument("--timeout", type=cli.positive_float, default=60.0,
                   help="seconds a download may wait for the server (default: 60)")
    return cli.add_common_flags(p)


def _summarise(args) -> int:
    for name in args.names:
        spec = _spec(name)
        if args.download and not all(locate(spec.name, s, args.data_dir) for s in SPLITS):
            download(spec.name, keep_archive=args.keep_archive, timeout=args.timeout,
                     progress=not args.quiet)
        for split in SPLITS:
            t0 = time.perf_counter()
            ds = load(spec.name, split, data_dir=args.data_dir)
            counts = np.bincount(ds.labels, minlength=ds.num_classes)
            print(f"{ds.name} {split}: {len(ds)} images, {ds.num_classes} classes "
                  f"({''.join(ds.class_names)}), per class {counts.min()}..{counts.max()}, "
                  f"mean pixel {ds.images.mean():.2f}, {time.perf_counter() - t0:.2f} s")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args)
    return cli.run(_summarise, args)


if __name__ == "__main__":
    sys.exit(main())
