"""The datasets: what each is on disk, where its files are looked for, and loading one split.

EMNIST's fix-ups happen here: its images are stored transposed (turned upright), the letters
split is labelled 1..26 on disk (shifted to 0..25), and class names come from the split's
mapping file.
"""
from __future__ import annotations

import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import sources
from .errors import DataError, MissingDataError
from .idx import fail, read_idx, shape_str
from .sources import cache_dir

log = logging.getLogger(__name__)

ENV_DATA_DIR = "CGANRAW_DATA_DIR"
SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)

_DIGITS = tuple("0123456789")
_UPPER = tuple(string.ascii_uppercase)
_LOWER = tuple(string.ascii_lowercase)
_MERGED_LOWER = tuple("abdefghnqrt")   # the lowercase letters that bymerge/balanced keep apart


def _strip_gz(filename: str) -> str:
    return filename[:-3] if filename.endswith(".gz") else filename


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """What a dataset is on disk.

    files maps a role ('train-images', 'train-labels', 'test-images', 'test-labels' and, for
    EMNIST, 'mapping') to the file's canonical name (IDX files with their `.gz`). sha256 maps the
    name of each decompressed IDX file to its known digest, or None where none is known.
    class_names are the built-in names; an EMNIST load takes them from the mapping file.
    """
    name: str
    family: str                          # 'mnist' or 'emnist': the cache subfolder
    num_classes: int
    class_names: tuple[str, ...]
    files: dict[str, str]
    sha256: dict[str, str | None]
    transposed: bool = False             # images stored column-major (EMNIST)
    label_offset: int = 0                # on-disk label of class 0 (1 for EMNIST letters)
    upper_names: bool = False            # class names upper-cased (letters: 'A' stands for A/a)
    description: str = ""

    @property
    def split_name(self) -> str | None:
        """EMNIST's split ('letters', ...) as in NIST's file names; None for MNIST."""
        return self.name.removeprefix("emnist-") if self.family == "emnist" else None

    def split_files(self, split: str) -> dict[str, str]:
        """Role -> file name of what `load(name, split)` reads."""
        out = {"images": self.files[f"{split}-images"], "labels": self.files[f"{split}-labels"]}
        if "mapping" in self.files:
            out["mapping"] = self.files["mapping"]
        return out

    def all_files(self) -> list[str]:
        return list(self.files.values())

    def digest(self, filename: str) -> str | None:
        """Known SHA-256 of the decompressed content of `filename` (with or without .gz)."""
        return self.sha256.get(_strip_gz(filename))

    def sources(self, filename: str | None = None) -> list[str]:
        """Where the files come from: one URL per mirror, or the archive URL."""
        if self.family == "mnist":
            return [u + (filename or "") for u in sources.MNIST_MIRRORS]
        return [sources.EMNIST_URL]


def _mnist_spec() -> DatasetSpec:
    files = {
        "train-images": "train-images-idx3-ubyte.gz",
        "train-labels": "train-labels-idx1-ubyte.gz",
        "test-images": "t10k-images-idx3-ubyte.gz",
        "test-labels": "t10k-labels-idx1-ubyte.gz",
    }
    return DatasetSpec("mnist", "mnist", 10, _DIGITS, files, dict(sources.MNIST_IDX_SHA256),
                       description="MNIST handwritten digits (60000 train / 10000 test)")


def _emnist_spec(split: str, classes: tuple[str, ...], offset: int, description: str) -> DatasetSpec:
    # Only the letters split is labelled from 1 and merges the two cases of each letter.
    p = f"emnist-{split}"
    files = {
        "train-images": f"{p}-train-images-idx3-ubyte.gz",
        "train-labels": f"{p}-train-labels-idx1-ubyte.gz",
        "test-images": f"{p}-test-images-idx3-ubyte.gz",
        "test-labels": f"{p}-test-labels-idx1-ubyte.gz",
        "mapping": f"{p}-mapping.txt",
    }
    # No SHA-256 of the EMNIST files is published: the archive's MD5, the zip CRCs, the image
    # counts and the IDX structure checks stand in for them.
    sha256 = {_strip_gz(f): None for f in files.values() if f.endswith(".gz")}
    return DatasetSpec(p, "emnist", len(classes), classes, files, sha256, transposed=True,
                       label_offset=offset, upper_names=split == "letters", description=description)


DATASETS: dict[str, DatasetSpec] = {"mnist": _mnist_spec()}
for _split, _classes, _offset, _desc in (
    ("letters", _UPPER, 1, "EMNIST letters: 26 classes, upper and lower case merged (A..Z)"),
    ("balanced", _DIGITS + _UPPER + _MERGED_LOWER, 0, "EMNIST balanced: 47 classes, digits and letters"),
    ("digits", _DIGITS, 0, "EMNIST digits: 10 classes"),
    ("byclass", _DIGITS + _UPPER + _LOWER, 0, "EMNIST byclass: 62 classes, 0-9 A-Z a-z (unbalanced)"),
    ("bymerge", _DIGITS + _UPPER + _MERGED_LOWER, 0, "EMNIST bymerge: 47 classes (unbalanced)"),
    ("mnist", _DIGITS, 0, "EMNIST mnist: 10 classes, MNIST-compatible"),
):
    DATASETS[f"emnist-{_split}"] = _emnist_spec(_split, _classes, _offset, _desc)
ALIASES = {"emnist": "emnist-letters"}
for _alias, _target in ALIASES.items():
    DATASETS[_alias] = DATASETS[_target]
del _split, _classes, _offset, _desc, _alias, _target


def resolve_name(name: str) -> str:
    """The canonical dataset name: 'emnist' -> 'emnist-letters'; case and '_' are forgiven."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key in DATASETS:
        return DATASETS[key].name
    choices = ", ".join(k + (f" (= {ALIASES[k]})" if k in ALIASES else "") for k in DATASETS)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {choices}")


def _spec(name: str) -> DatasetSpec:
    return DATASETS[resolve_name(name)]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    return split


def read_mapping(path, spec: DatasetSpec) -> list[str]:
    """Class names from an EMNIST mapping file: lines `<class> <code> [<code> ...]`."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError as e:
        raise fail(label, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise fail(label, "not a mapping file: it is not ASCII text") from None
    names: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if len(nums) < 2 or any(not 0 < c < 0x110000 for c in nums[1:]):
            raise fail(label, f"line {lineno}: expected '<class> <character code> [<code>]', "
                              f"got {line.strip()!r}")
        cls = nums[0]
        if cls in names:
            raise fail(label, f"line {lineno}: class {cls} appears twice")
        name = chr(nums[1])
        names[cls] = name.upper() if spec.upper_names else name
    lo, k = spec.label_offset, spec.num_classes
    if sorted(names) != list(range(lo, lo + k)):
        found = f"{min(names)}..{max(names)} ({len(names)} classes)" if names else "no classes"
        raise fail(label, f"mapping has {found}, expected classes {lo}..{lo + k - 1} for {spec.name}")
    return [names[lo + i] for i in range(k)]


# --------------------------------------------------------------------------------------------
# Where the files are
# --------------------------------------------------------------------------------------------

def _roots(data_dir, name: str) -> list[tuple[Path, str]]:
    """The folders searched, in order, each with why. A data_dir that is not a folder is an
    error (never a silent fall-back to the next place); a $CGANRAW_DATA_DIR that is not one
    is skipped with a warning."""
    roots = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            what = "is not a folder" if d.exists() else "does not exist"
            raise DataError(f"{name}: the data folder {d} (data_dir / --data-dir) {what}: give the "
                            f"folder that holds the files, or leave it out to use ${ENV_DATA_DIR}, "
                            f"then the user cache {cache_dir()}")
        roots.append((d, "data_dir / --data-dir"))
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    if env:
        d = Path(env).expanduser()
        if d.is_dir():
            roots.append((d, ENV_DATA_DIR))
        else:
            log.warning("%s=%s is not a folder: ignored", ENV_DATA_DIR, env)
    roots.append((cache_dir(), "user cache"))
    return roots


def _subdirs(spec: DatasetSpec) -> list[str]:
    f = spec.family
    return [f, f"{f}/gzip", ".", "gzip", f"{f.upper()}/raw"]


def _search_dirs(spec: DatasetSpec, data_dir) -> list[tuple[Path, str]]:
    dirs: dict[Path, str] = {}
    for root, why in _roots(data_dir, spec.name):
        for sub in _subdirs(spec):
            dirs.setdefault(root if sub == "." else root / sub, why)
    return list(dirs.items())


def _find_file(d: Path, filename: str) -> Path | None:
    for cand in dict.fromkeys((filename, _strip_gz(filename))):
        p = d / cand
        if p.is_file():
            return p
    return None


def locate(name: str, split: str = "train", data_dir=None) -> dict[str, Path] | None:
    """Role ('images', 'labels' and for EMNIST 'mapping') -> path of the split's files, from the
    first searched folder that holds all of them; None when no folder does. DataError when
    data_dir is given and is not a folder."""
    spec = _spec(name)
    need = spec.split_files(_check_split(split))
    for d, why in _search_dirs(spec, data_dir):
        found = {role: _find_file(d, fname) for role, fname in need.items()}
        if all(found.values()):
            if data_dir is not None and why != "data_dir / --data-dir":
                log.warning("%s: %s holds no %s files; using %s (%s)", spec.name, data_dir, split, d, why)
            return found
    return None


def _missing_message(spec: DatasetSpec, split: str | None, data_dir, reason: str | None = None) -> str:
    need = spec.split_files(split) if split else dict(enumerate(spec.all_files()))
    what = f"{spec.name} ({split} split)" if split else spec.name
    lines = [reason or f"{what}: data files not found."]
    lines.append("Needed files (gzip-compressed, or decompressed without the .gz):")
    lines += [f"    {f}" for f in need.values()]
    subs = ", ".join(s + "/" for s in _subdirs(spec) if s != ".")
    lines.append(f"Looked in these folders (and their subfolders {subs}):")
    lines += [f"    {root}   ({why})" for root, why in _roots(data_dir, spec.name)]
    partial = []
    for d, _ in _search_dirs(spec, data_dir):
        have = [f for f in need.values() if _find_file(d, f)]
        if have:
            partial.append(f"    {d} has only: {', '.join(have)}")
    if partial:
        lines.append("Incomplete folders:")
        lines += partial
    if spec.family == "mnist":
        lines.append("They come from: " + "  or  ".join(spec.sources("<file>")))
    else:
        lines.append(f"They come from NIST's archive {sources.EMNIST_URL} "
                     f"({sources.EMNIST_ARCHIVE_SIZE / 1e6:.0f} MB; the files are under "
                     f"{sources.EMNIST_MEMBER_DIR} in it, which holds every EMNIST split).")
    target = cache_dir() / spec.family
    lines.append(f"To use files you already have: put them in a folder DIR (or DIR/{spec.family}/) "
                 f"and pass --data-dir DIR (data_dir=DIR in Python) or set {ENV_DATA_DIR}=DIR.")
    if spec.family == "emnist":
        lines.append(f"If you have {sources.EMNIST_ARCHIVE} itself, unzip it in DIR (giving DIR/gzip/...) "
                     f"or put it in {target}/ and allow the download, which then uses it.")
    lines.append(f"To download them into {target}: load(..., download=True) in Python, or the "
                 f"--download flag where a command offers it.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

@dataclass(repr=False, eq=False)
class Dataset:
    """One split of a dataset: images (N,28,28) uint8 upright, white on black; labels (N,) int64
    in 0..K-1; class_names[k] is the character of class k."""
    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    split: str = "train"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, images={self.images.shape} "
                f"{self.images.dtype}, num_classes={self.num_classes})")


def _transpose_inplace(images: np.ndarray, chunk: int = 8192) -> None:
    """images[i] = images[i].T for every square image, one chunk at a time (no full copy)."""
    for lo in range(0, len(images), chunk):
        blk = images[lo:lo + chunk]
        blk[...] = blk.transpose(0, 2, 1).copy()


def _load_split(spec: DatasetSpec, split: str, paths: dict[str, Path]) -> Dataset:
    images = read_idx(paths["images"], sha256=spec.digest(paths["images"].name), ndim=3, dtype=np.uint8)
    if images.shape[1:] != IMAGE_SHAPE:
        raise fail(paths["images"], f"images are {shape_str(images.shape[1:])}, expected 28x28")
    if len(images) == 0:
        raise fail(paths["images"], "holds no images")
    raw = read_idx(paths["labels"], sha256=spec.digest(paths["labels"].name), ndim=1, dtype=np.uint8)
    if len(raw) != len(images):
        raise fail(paths["labels"], f"{len(raw)} labels, but {paths['images']} holds {len(images)} "
                                    f"images: the counts must match")
    lo, k = spec.label_offset, spec.num_classes
    bad = (raw < lo) | (raw >= lo + k)
    if bad.any():
        i = int(np.argmax(bad))
        raise fail(paths["labels"], f"{int(bad.sum())} labels out of range for {spec.name}: expected "
                                    f"{lo}..{lo + k - 1}, found {int(raw.min())}..{int(raw.max())} "
                                    f"(first at index {i}: {int(raw[i])})")
    labels = raw.astype(np.int64)
    if lo:
        labels -= lo
    if spec.transposed:
        _transpose_inplace(images)
    names = read_mapping(paths["mapping"], spec) if "mapping" in paths else list(spec.class_names)
    return Dataset(spec.name, images, labels, names, split)


def load(name: str, split: str = "train", data_dir=None, download: bool = False) -> Dataset:
    """Load one split of a dataset (see the package docstring for where files are looked for).

    With download=True, files found nowhere are fetched into the user cache first. Raises
    MissingDataError (a DataError) when the files are absent and not downloaded, DataError
    when a file is invalid or data_dir is not a folder, ValueError for an unknown name or split.
    """
    spec = _spec(name)
    _check_split(split)
    paths = locate(spec.name, split, data_dir)
    if paths is None:
        if not download:
            raise MissingDataError(_missing_message(spec, split, data_dir))
        _download(spec, None, data_dir=data_dir)
        paths = locate(spec.name, split, data_dir)
        if paths is None:   # the download placed the files in the cache, which is searched
            raise MissingDataError(_missing_message(spec, split, data_dir))
    log.debug("%s %s: %s", spec.name, split, ", ".join(str(p) for p in paths.values()))
    return _load_split(spec, split, paths)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------

def _validate_file(spec: DatasetSpec, path: Path, filename: str) -> int | None:
    """The number of items in `path`, a valid copy of the dataset file `filename` (None for a
    mapping file); DataError otherwise."""
    if filename.endswith(".txt"):
        read_mapping(path, spec)
        return None
    images = "-images-" in filename
    a = read_idx(path, sha256=spec.digest(filename), ndim=3 if images else 1, dtype=np.uint8)
    if images and a.shape[1:] != IMAGE_SHAPE:
        raise fail(path, f"images are {shape_str(a.shape[1:])}, expected 28x28")
    return len(a)


def _is_valid(spec: DatasetSpec, path: Path, filename: str) -> bool:
    try:
        _validate_file(spec, path, filename)
        return True
    except DataError:
        return False


def download(name: str, dest=None, *, keep_archive: bool = False, timeout: float = 60.0,
             progress=True) -> Path:
    """Fetch every file of dataset `name` (both splits) into `dest`, verified; return `dest`.

    dest defaults to <cache_dir()>/<family> (mnist/ or emnist/). Files already there and valid
    are kept. MNIST: the four files from the first mirror that serves them with their published
    MD5. EMNIST: NIST's gzip.zip, checked against its published MD5, of which only this split's
    five members are extracted and checked (image counts from the EMNIST paper); the archive is
    deleted afterwards unless keep_archive (an archive found already in dest is used when its
    MD5 is right, and never deleted). progress: True for a tqdm bar on stderr when it is a
    terminal, a text stream for a bar there, None/False for none; what is fetched from where is
    logged (logger cganraw.data). Raises MissingDataError when the download fails, DataError
    when what came is invalid.
    """
    return _download(_spec(name), dest, keep_archive=keep_archive, timeout=timeout, progress=progress)


def _download(spec: DatasetSpec, dest, *, data_dir=None, keep_archive=False, timeout=60.0,
              progress=True) -> Path:
    dest = Path(dest).expanduser() if dest is not None else cache_dir() / spec.family
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(dest, f"cannot create the download folder: {e.strerror or e}") from None
    with sources.dir_lock(dest):
        todo = [f for f in spec.all_files() if not (dest / f).is_file()
                or not _is_valid(spec, dest / f, f)]
        if not todo:
            return dest
        validate = lambda path, fname: _validate_file(spec, path, fname)  # noqa: E731
        try:
            if spec.family == "mnist":
                sources.fetch_mnist(dest, todo, validate, timeout=timeout, progress=progress)
            else:
                sources.fetch_emnist(dest, spec.split_name, todo, validate, keep_archive=keep_archive,
                                     timeout=timeout, progress=progress)
        except sources.DownloadError as e:
            raise MissingDataError(_missing_message(
                spec, None, data_dir, reason=f"{spec.name}: download failed: {e}")) from None
    log.info("%s: files in %s", spec.name, dest)
    return dest
