"""Synthetic data in EMNIST's exact on-disk layout, shared by the data and trainer tests:
images transposed per image, letters labelled 1..26, emnist-<split>-mapping.txt."""
import string
from pathlib import Path

import numpy as np

from cganraw.data import DATASETS, write_idx

BALANCED_CHARS = string.digits + string.ascii_uppercase + "abdefghnqrt"


def upright_images(n, rng):
    """Faint noise plus a horizontal bar near the top: asymmetric under transposition."""
    imgs = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    imgs[:, 2:5, 4:24] = 255
    return imgs


def mapping_text(split):
    if split == "letters":
        lines = [f"{i + 1} {65 + i} {97 + i}" for i in range(26)]
    elif split == "balanced":
        lines = [f"{i} {ord(c)}" for i, c in enumerate(BALANCED_CHARS)]
    elif split == "digits":
        lines = [f"{i} {48 + i}" for i in range(10)]
    else:
        raise ValueError(split)
    return "\n".join(lines) + "\n"


def write_emnist(folder, split, rng, n=(60, 20), gz=True):
    """Write the five files of an EMNIST split as NIST ships them; return the upright truth."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = DATASETS[f"emnist-{split}"]
    truth = {}
    for part, count in zip(("train", "test"), n):
        up = upright_images(count, rng)
        labels = rng.integers(0, spec.num_classes, size=count)
        ext = ".gz" if gz else ""
        write_idx(folder / f"emnist-{split}-{part}-images-idx3-ubyte{ext}", up.transpose(0, 2, 1))
        write_idx(folder / f"emnist-{split}-{part}-labels-idx1-ubyte{ext}",
                  (labels + spec.label_offset).astype(np.uint8))
        truth[part] = (up, labels)
    (folder / f"emnist-{split}-mapping.txt").write_text(mapping_text(split))
    return truth
