"""MNIST and EMNIST as compact uint8 arrays, and the batches a trainer draws from them.

    ds = load("emnist", split="train")             # Dataset: images (N,28,28) uint8, labels (N,) int64
    it = BatchIterator(ds.images, ds.labels, 64, np.random.default_rng(0))
    for x, y in it:                                # one epoch
        ...                                        # x (64,1,28,28) float32 in [-1,1], y (64,) int64

Datasets: `mnist`, and the EMNIST splits `emnist-letters` (alias `emnist`), `emnist-balanced`,
`emnist-digits`, `emnist-byclass`, `emnist-bymerge`, `emnist-mnist`. Every image comes back
upright and white on black like MNIST (EMNIST stores its images transposed; `load` fixes that),
and every label lies in 0..K-1 (EMNIST letters is labelled 1..26 on disk; `load` shifts it).

Where the files are looked for, in order:
    1. `data_dir` (the CLIs' --data-dir; one that is not a folder is an error), then the
       environment variable CGANRAW_DATA_DIR;
    2. the user cache, $XDG_CACHE_HOME/cganraw or else ~/.cache/cganraw;
    3. the official sources, only with `download=True`: the files are fetched through pooch,
       checked against their published MD5s, validated and renamed into <cache>/mnist/ or
       <cache>/emnist/.
In each of those roots the files may lie in <root>/<family>/ (family: mnist, emnist), directly in
<root>, in a gzip/ folder (an unzipped EMNIST gzip.zip) or in torchvision's <root>/MNIST/raw/
layout; gzip-compressed (`.gz`) or decompressed.

Every problem with the files (missing, truncated, corrupt, wrong digest, labels out of range)
raises `DataError`, a ValueError whose message names the file and says what is wrong.
Run `python -m cganraw.data NAME [--download]` to fetch and summarise a dataset.

Modules: idx (the IDX format), datasets (the list, lookup, loading, EMNIST fix-ups), sources
(URLs, checksums, sizes, the cache, downloads), batches (BatchIterator), __main__ (the CLI).
"""
from __future__ import annotations

from ..images import to_float, to_uint8
from .batches import BatchIterator
from .datasets import (
    ALIASES,
    DATASETS,
    ENV_DATA_DIR,
    IMAGE_SHAPE,
    SPLITS,
    Dataset,
    DatasetSpec,
    download,
    load,
    locate,
    read_mapping,
    resolve_name,
)
from .errors import DataError, MissingDataError
from .idx import read_idx, write_idx
from .sources import (
    EMNIST_ARCHIVE,
    EMNIST_ARCHIVE_MD5,
    EMNIST_ARCHIVE_SIZE,
    EMNIST_COUNTS,
    EMNIST_URL,
    MNIST_MIRRORS,
    cache_dir,
)

__all__ = [
    "DATASETS", "DataError", "MissingDataError", "Dataset", "DatasetSpec", "BatchIterator",
    "resolve_name", "load", "download", "locate", "cache_dir", "read_idx", "write_idx",
    "to_float", "to_uint8", "ENV_DATA_DIR", "SPLITS",
]


def main(argv=None) -> int:
    """The `python -m cganraw.data` command (imported on call, so that running the package as
    a module does not find its __main__ already imported)."""
    from .__main__ import main as _main
    return _main(argv)
