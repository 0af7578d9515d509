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
    1. `data_dir` (the CLIs' --data-dir), then the environment variable CGANRAW_DATA_DIR;
    2. the user cache, $XDG_CACHE_HOME/cganraw or else ~/.cache/cganraw;
    3. the official sources, only with `download=True`: the files are fetched, verified and
       placed atomically in <cache>/mnist/ or <cache>/emnist/.
In each of those roots the files may lie in <root>/<family>/ (family: mnist, emnist), directly in
<root>, in a gzip/ folder (an unzipped EMNIST gzip.zip) or in torchvision's <root>/MNIST/raw/
layout; gzip-compressed (`.gz`) or decompressed.

Every problem with the files (missing, truncated, corrupt, wrong digest, labels out of range)
raises `DataError`, a ValueError whose message names the file and says what is wrong.
Run `python -m cganraw.data NAME [--download]` to fetch and summarise a dataset.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import math
import operator
import os
import shutil
import string
import struct
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from . import __version__, fileio
from .images import to_float, to_uint8

__all__ = [
    "DATASETS", "DataError", "MissingDataError", "Dataset", "DatasetSpec", "BatchIterator",
    "resolve_name", "load", "download", "locate", "cache_dir", "read_idx", "write_idx",
    "to_float", "to_uint8", "ENV_DATA_DIR", "SPLITS",
]

ENV_DATA_DIR = "CGANRAW_DATA_DIR"
SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)


class DataError(ValueError):
    """A data file is missing, unreadable or not what it should be; the message names the file."""


class MissingDataError(DataError):
    """The files of a dataset are not on this machine (and were not, or could not be, downloaded)."""


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_ARCHIVE = "gzip.zip"        # its name in <cache>/emnist/ while it is being used
EMNIST_MEMBER_DIR = "gzip/"        # the archive holds every file under gzip/
# MD5 of NIST's gzip.zip as published by torchvision and others. A mismatch only warns: the
# members are verified on their own (zip CRC + IDX structure), and NIST may repackage.
EMNIST_ARCHIVE_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"

_DIGITS = tuple("0123456789")
_UPPER = tuple(string.ascii_uppercase)
_LOWER = tuple(string.ascii_lowercase)
_MERGED_LOWER = tuple("abdefghnqrt")   # the lowercase letters that bymerge/balanced keep apart


def _strip_gz(filename: str) -> str:
    return filename[:-3] if filename.endswith(".gz") else filename


@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """What a dataset is on disk and where it comes from.

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
    urls: tuple[str, ...] = ()           # MNIST: mirror prefixes; EMNIST: the archive
    description: str = ""

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
            return [u + (filename or "") for u in self.urls]
        return list(self.urls)


def _mnist_spec() -> DatasetSpec:
    files = {
        "train-images": "train-images-idx3-ubyte.gz",
        "train-labels": "train-labels-idx1-ubyte.gz",
        "test-images": "t10k-images-idx3-ubyte.gz",
        "test-labels": "t10k-labels-idx1-ubyte.gz",
    }
    sha256 = {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }
    return DatasetSpec("mnist", "mnist", 10, _DIGITS, files, sha256, urls=MNIST_MIRRORS,
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
    # No SHA-256 of the EMNIST files is known for sure here: the archive's zip CRCs and the IDX
    # structure checks stand in for them. Fill these in to pin the content.
    sha256 = {_strip_gz(f): None for f in files.values() if f.endswith(".gz")}
    return DatasetSpec(p, "emnist", len(classes), classes, files, sha256, transposed=True,
                       label_offset=offset, upper_names=split == "letters", urls=(EMNIST_URL,),
                       description=description)


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


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

# IDX type code -> (on-disk big-endian dtype, name)
_IDX_TYPES = {
    0x08: (np.dtype("u1"), "unsigned byte"),
    0x09: (np.dtype("i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}
_IDX_CODES = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, (dt, _) in _IDX_TYPES.items()}


def _shape_str(dims) -> str:
    return "x".join(str(d) for d in dims) if len(dims) else "()"


def _fail(path, what: str) -> DataError:
    return DataError(f"{path}: {what}")


def _read_full(stream, mv: memoryview) -> int:
    """Fill `mv` from `stream`; return how many bytes it got (fewer only at end of stream)."""
    got = 0
    while got < len(mv):
        n = stream.readinto(mv[got:])
        if not n:
            break
        got += n
    return got


def _drain(stream) -> int:
    n = 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return n
        n += len(chunk)


def read_idx(path, *, sha256: str | None = None, ndim: int | None = None,
             dtype=None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw, told apart by their first bytes), validated.

    Checks the magic number (two zero bytes, a known type code, the number of dimensions), that
    the data is exactly as long as the header says (no truncation, no trailing bytes), the gzip
    stream (CRC, premature end), and optionally the number of dimensions `ndim`, the element
    type `dtype` and the SHA-256 of the decompressed bytes. Any failure raises DataError naming
    `path`. Returns a native-byte-order array shaped as the header says.
    """
    label = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise _fail(label, f"cannot read: {e.strerror or e}") from None
    with f:
        head = f.read(4)
        compressed = head[:2] == b"\x1f\x8b"
        f.seek(0)
        raw_size = os.fstat(f.fileno()).st_size
        stream = gzip.GzipFile(fileobj=f, mode="rb") if compressed else f
        try:
            return _read_idx_stream(stream, label, compressed, raw_size, sha256, ndim, dtype)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            what = "ends early (truncated gzip)" if isinstance(e, EOFError) else "is corrupt"
            raise _fail(label, f"gzip stream {what}: {e}") from None
        except OSError as e:   # an I/O error while reading
            raise _fail(label, f"cannot read: {e}") from None


def _read_idx_stream(stream, label, compressed, raw_size, sha256, want_ndim, want_dtype):
    header = stream.read(4)
    if len(header) < 4:
        what = "empty" if not header else f"only {len(header)} bytes long"
        raise _fail(label, f"not an IDX file: {what} (an IDX header takes at least 8 bytes)")
    magic = int.from_bytes(header, "big")
    if header[:2] != b"\0\0" or header[2] not in _IDX_TYPES or header[3] == 0:
        hint = ""
        if header[:1] == b"<":
            hint = " (it looks like an HTML page: a failed download?)"
        elif header[:2] == b"PK":
            hint = " (it is a zip archive)"
        elif header[:2] == b"\0\0" and header[2] not in _IDX_TYPES:
            hint = f" (unknown type code 0x{header[2]:02x})"
        elif header[:2] == b"\0\0":
            hint = " (zero dimensions)"
        known = ", ".join(f"0x{c:02x} {n}" for c, (_, n) in _IDX_TYPES.items())
        raise _fail(label, f"bad magic number 0x{magic:08x}{hint}: not an IDX file; expected "
                           f"0x0000TTDD with TT a type code ({known}) and DD the number of "
                           f"dimensions, e.g. 0x00000803 for images, 0x00000801 for labels")
    disk_dtype, type_name = _IDX_TYPES[header[2]]
    nd = header[3]
    dim_bytes = stream.read(4 * nd)
    if len(dim_bytes) < 4 * nd:
        raise _fail(label, f"truncated header: magic 0x{magic:08x} announces {nd} dimensions "
                           f"({4 * nd} bytes of sizes), file has {len(dim_bytes)}")
    dims = struct.unpack(f">{nd}I", dim_bytes)
    if want_ndim is not None and nd != want_ndim:
        raise _fail(label, f"wrong number of dimensions: header (magic 0x{magic:08x}) says {nd} "
                           f"({_shape_str(dims)}), expected {want_ndim}")
    if want_dtype is not None and disk_dtype.newbyteorder("=") != np.dtype(want_dtype):
        raise _fail(label, f"wrong element type: magic 0x{magic:08x} says {type_name} "
                           f"(0x{header[2]:02x}), expected {np.dtype(want_dtype)}")
    count = math.prod(dims)
    nbytes = count * disk_dtype.itemsize
    said = f"header says {_shape_str(dims)} = {nbytes} bytes of data"
    if disk_dtype.itemsize > 1:
        said = (f"header says {_shape_str(dims)} {type_name}s ({disk_dtype.itemsize} bytes each) "
                f"= {nbytes} bytes of data")
    if not compressed:          # the size is known before reading anything
        have = raw_size - 4 - 4 * nd
        if have < nbytes:
            raise _fail(label, f"truncated: {said}, file has {have}")
        if have > nbytes:
            raise _fail(label, f"{have - nbytes} trailing bytes: {said}, file has {have}")
    try:
        buf = np.empty(count, dtype=disk_dtype)
    except (MemoryError, ValueError):
        raise _fail(label, f"{said}: too large to hold in memory (a corrupt header?)") from None
    got = _read_full(stream, memoryview(buf).cast("B"))
    if got < nbytes:
        raise _fail(label, f"truncated: {said}, file has {got}")
    extra = _drain(stream)      # for gzip this also reads the trailer, checking CRC and length
    if extra:
        raise _fail(label, f"{extra} trailing bytes: {said}, file has {nbytes + extra}")
    if sha256 is not None:
        h = hashlib.sha256(header)
        h.update(dim_bytes)
        h.update(memoryview(buf).cast("B"))
        if h.hexdigest() != sha256.lower():
            raise _fail(label, f"SHA-256 mismatch (of the decompressed content): expected {sha256}, "
                               f"got {h.hexdigest()}; the file is corrupt or not the official one: "
                               f"delete it and fetch it again")
    if disk_dtype.byteorder not in ("=", "|"):     # big-endian on disk, little in memory
        buf = buf.byteswap(inplace=True).view(disk_dtype.newbyteorder("="))
    return buf.reshape(dims)


def write_idx(path, array) -> None:
    """Write `array` as an IDX file (gzip-compressed when `path` ends in .gz), atomically."""
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("=") if a.dtype.itemsize > 1 else a.dtype)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {a.dtype}; use one of "
                         + ", ".join(str(d) for d in _IDX_CODES))
    if not 1 <= a.ndim <= 255 or any(d >= 2 ** 32 for d in a.shape):
        raise ValueError(f"IDX cannot store shape {a.shape}")
    header = bytes((0, 0, code, a.ndim)) + struct.pack(f">{a.ndim}I", *a.shape)
    payload = header + np.ascontiguousarray(a, dtype=_IDX_TYPES[code][0]).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    _atomic_write_bytes(Path(path), payload)


def _read_mapping(path, spec: DatasetSpec) -> list[str]:
    """Class names from an EMNIST mapping file: lines `<class> <code> [<code> ...]`."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError as e:
        raise _fail(label, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise _fail(label, "not a mapping file: it is not ASCII text") from None
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
            raise _fail(label, f"line {lineno}: expected '<class> <character code> [<code>]', "
                               f"got {line.strip()!r}")
        cls = nums[0]
        if cls in names:
            raise _fail(label, f"line {lineno}: class {cls} appears twice")
        name = chr(nums[1])
        names[cls] = name.upper() if spec.upper_names else name
    lo, k = spec.label_offset, spec.num_classes
    if sorted(names) != list(range(lo, lo + k)):
        found = f"{min(names)}..{max(names)} ({len(names)} classes)" if names else "no classes"
        raise _fail(label, f"mapping has {found}, expected classes {lo}..{lo + k - 1} for {spec.name}")
    return [names[lo + i] for i in range(k)]


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


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/cganraw, else ~/.cache/cganraw (not created here)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and os.path.isabs(xdg):      # the XDG spec says to ignore a relative path
        return Path(xdg) / "cganraw"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):    # no HOME and no passwd entry
        return Path(tempfile.gettempdir()) / "cganraw-cache"
    return home / ".cache" / "cganraw"


def _roots(data_dir) -> list[tuple[Path, str]]:
    roots = []
    if data_dir is not None:
        roots.append((Path(data_dir).expanduser(), "data_dir / --data-dir"))
    env = os.environ.get(ENV_DATA_DIR, "").strip()
    if env:
        roots.append((Path(env).expanduser(), ENV_DATA_DIR))
    roots.append((cache_dir(), "user cache"))
    return roots


def _subdirs(spec: DatasetSpec) -> list[str]:
    f = spec.family
    return [f, f"{f}/gzip", ".", "gzip", f"{f.upper()}/raw"]


def _search_dirs(spec: DatasetSpec, data_dir) -> list[Path]:
    dirs: list[Path] = []
    for root, _ in _roots(data_dir):
        for sub in _subdirs(spec):
            d = root if sub == "." else root / sub
            if d not in dirs:
                dirs.append(d)
    return dirs


def _find_file(d: Path, filename: str) -> Path | None:
    for cand in dict.fromkeys((filename, _strip_gz(filename))):
        p = d / cand
        if p.is_file():
            return p
    return None


def locate(name: str, split: str = "train", data_dir=None) -> dict[str, Path] | None:
    """Role ('images', 'labels' and for EMNIST 'mapping') -> path of the split's files, from the
    first searched folder that holds all of them; None when no folder does."""
    spec = _spec(name)
    need = spec.split_files(_check_split(split))
    for d in _search_dirs(spec, data_dir):
        found = {role: _find_file(d, fname) for role, fname in need.items()}
        if all(found.values()):
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
    lines += [f"    {root}   ({why})" for root, why in _roots(data_dir)]
    partial = []
    for d in _search_dirs(spec, data_dir):
        have = [f for f in need.values() if _find_file(d, f)]
        if have:
            partial.append(f"    {d} has only: {', '.join(have)}")
    if partial:
        lines.append("Incomplete folders:")
        lines += partial
    if spec.family == "mnist":
        lines.append("They come from: " + "  or  ".join(spec.sources("<file>")))
    else:
        lines.append(f"They come from NIST's archive {EMNIST_URL} (about 560 MB; the files are "
                     f"under {EMNIST_MEMBER_DIR} in it, which holds every EMNIST split).")
    target = cache_dir() / spec.family
    lines.append(f"To use files you already have: put them in a folder DIR (or DIR/{spec.family}/) "
                 f"and pass --data-dir DIR (data_dir=DIR in Python) or set {ENV_DATA_DIR}=DIR.")
    if spec.family == "emnist":
        lines.append(f"If you have {EMNIST_ARCHIVE} itself, unzip it in DIR (giving DIR/gzip/...) or "
                     f"put it in {target}/ and allow the download, which then uses it.")
    lines.append(f"To download them into {target}: load(..., download=True) in Python, or the "
                 f"--download flag where a command offers it.")
    return "\n".join(lines)


def _transpose_inplace(images: np.ndarray, chunk: int = 8192) -> None:
    """images[i] = images[i].T for every square image, one chunk at a time (no full copy)."""
    for lo in range(0, len(images), chunk):
        blk = images[lo:lo + chunk]
        blk[...] = blk.transpose(0, 2, 1).copy()


def _load_split(spec: DatasetSpec, split: str, paths: dict[str, Path]) -> Dataset:
    images = read_idx(paths["images"], sha256=spec.digest(paths["images"].name), ndim=3, dtype=np.uint8)
    if images.shape[1:] != IMAGE_SHAPE:
        raise _fail(paths["images"], f"images are {_shape_str(images.shape[1:])}, expected 28x28")
    if len(images) == 0:
        raise _fail(paths["images"], "holds no images")
    raw = read_idx(paths["labels"], sha256=spec.digest(paths["labels"].name), ndim=1, dtype=np.uint8)
    if len(raw) != len(images):
        raise _fail(paths["labels"], f"{len(raw)} labels, but {paths['images']} holds {len(images)} "
                                     f"images: the counts must match")
    lo, k = spec.label_offset, spec.num_classes
    bad = (raw < lo) | (raw >= lo + k)
    if bad.any():
        i = int(np.argmax(bad))
        raise _fail(paths["labels"], f"{int(bad.sum())} labels out of range for {spec.name}: expected "
                                     f"{lo}..{lo + k - 1}, found {int(raw.min())}..{int(raw.max())} "
                                     f"(first at index {i}: {int(raw[i])})")
    labels = raw.astype(np.int64)
    if lo:
        labels -= lo
    if spec.transposed:
        _transpose_inplace(images)
    names = _read_mapping(paths["mapping"], spec) if "mapping" in paths else list(spec.class_names)
    return Dataset(spec.name, images, labels, names, split)


def load(name: str, split: str = "train", data_dir=None, download: bool = False) -> Dataset:
    """Load one split of a dataset (see the module docstring for where files are looked for).

    With download=True, files found nowhere are fetched into the user cache first. Raises
    MissingDataError (a DataError) when the files are absent and not downloaded, DataError
    when a file is invalid, ValueError for an unknown name or split.
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
    return _load_split(spec, split, paths)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------

def urlopen(request, timeout):
    """Open a URL; download() calls this module attribute, so tests can replace it."""
    import urllib.request
    return urllib.request.urlopen(request, timeout=timeout)


class _IncompleteDownload(OSError):
    pass


def _network_errors() -> tuple[type[BaseException], ...]:
    import http.client
    import urllib.error
    return (urllib.error.URLError, http.client.HTTPException, OSError)


class _Progress:
    """A progress bar on a TTY; a plain line per 10% (or per 64 MB) on anything else."""

    def __init__(self, label: str, total: int | None, done: int, stream):
        self.label, self.total, self.done, self.stream = label, total, done, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.t0 = self.t_draw = time.monotonic()
        self.start = done
        self.next_mark = self._mark_after(done)
        if stream is not None and not self.tty:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            resumed = f", resuming at {done / 1e6:.1f} MB" if done else ""
            self._print(f"downloading {label}{size}{resumed}")

    def _mark_after(self, done: int) -> int:
        step = self.total // 10 if self.total else 64 << 20
        step = max(step, 1)
        return (done // step + 1) * step

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _line(self) -> str:
        rate = (self.done - self.start) / max(time.monotonic() - self.t0, 1e-6) / 1e6
        if self.total:
            frac = min(self.done / self.total, 1.0)
            return (f"{self.label}: {frac:4.0%} {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                    f"{rate:.1f} MB/s")
        return f"{self.label}: {self.done / 1e6:.1f} MB {rate:.1f} MB/s"

    def update(self, n: int) -> None:
        self.done += n
        if self.stream is None:
            return
        if self.tty:
            now = time.monotonic()
            if now - self.t_draw >= 0.1:
                self.t_draw = now
                self._draw()
        elif self.done >= self.next_mark:
            self.next_mark = self._mark_after(self.done)
            self._print(self._line())

    def _draw(self) -> None:
        bar = ""
        if self.total:
            width = 30
            fill = int(width * min(self.done / self.total, 1.0))
            bar = "[" + "#" * fill + "." * (width - fill) + "] "
        self.stream.write("\r" + bar + self._line() + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """End the display: 'done' when everything announced came, 'stopped' otherwise."""
        if self.stream is None:
            return
        finished = self.total is None or self.done >= self.total
        if self.tty:
            self._draw()
            self.stream.write("\n" if finished else " stopped\n")
            self.stream.flush()
        else:
            self._print(self._line() + (" done" if finished else " stopped"))


def _header(resp, name: str):
    headers = getattr(resp, "headers", None)
    return headers.get(name) if headers is not None else None


def _fetch_url(url: str, target: Path, *, opener, timeout: float, progress, resume: bool) -> None:
    """Stream `url` into `target`; with `resume`, append from target's current size when the
    server honours a Range request. Raises OSError (or urllib/http errors) on failure."""
    import urllib.error
    import urllib.request

    start = target.stat().st_size if resume and target.exists() else 0
    headers = {"User-Agent": f"cganraw/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = opener(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:     # the partial file is not a prefix we can extend
            target.unlink()
            return _fetch_url(url, target, opener=opener, timeout=timeout, progress=progress,
                              resume=False)
        raise
    restart = False
    try:
        status = getattr(resp, "status", None) or resp.getcode()
        if status == 206:   # a partial answer is only usable when it starts where we asked
            crange = _header(resp, "Content-Range") or ""
            restart = not (start and crange.startswith(f"bytes {start}-"))
            if restart and not start:
                raise _IncompleteDownload(f"the server sent a partial answer ({crange or 'no range'})")
        if not restart:
            mode = "ab" if status == 206 else "wb"
            if mode == "wb":
                start = 0           # the server ignored the Range request: start over
            length = _header(resp, "Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            bar = _Progress(url.rsplit("/", 1)[-1], total, start, progress)
            try:
                with open(target, mode) as out:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
                        bar.update(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                bar.close()
    finally:
        close = getattr(resp, "close", None)
        if close is not None:
            close()
    if restart:
        target.unlink()
        return _fetch_url(url, target, opener=opener, timeout=timeout, progress=progress, resume=False)
    size = target.stat().st_size
    if total is not None and size != total:
        raise _IncompleteDownload(f"got {size} of {total} bytes")


_fsync_dir = fileio.fsync_dir
_tmp_path = fileio.temp_path
_place = fileio.place
_atomic_write_bytes = fileio.atomic_write


@contextlib.contextmanager
def _dir_lock(dest: Path, progress):
    """An exclusive lock on `dest` across processes (POSIX), so two downloads do not collide."""
    try:
        import fcntl
    except ImportError:       # Windows: no lock
        yield
        return
    with open(dest / ".cganraw-download.lock", "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if progress is not None:
                print(f"waiting for another process downloading into {dest} ...", file=progress, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _validate_file(spec: DatasetSpec, path: Path, filename: str) -> None:
    """DataError unless `path` is a valid copy of the dataset file `filename`."""
    if filename.endswith(".txt"):
        _read_mapping(path, spec)
    else:
        read_idx(path, sha256=spec.digest(filename), ndim=3 if "-images-" in filename else 1,
                 dtype=np.uint8)


def _is_valid(spec: DatasetSpec, path: Path, filename: str) -> bool:
    try:
        _validate_file(spec, path, filename)
        return True
    except DataError:
        return False


def download(name: str, dest=None, *, keep_archive: bool = False, urlopen=None,
             timeout: float = 60.0, progress=True) -> Path:
    """Fetch every file of dataset `name` (both splits) into `dest`, verified; return `dest`.

    dest defaults to <cache_dir()>/<family> (mnist/ or emnist/). Files already there and valid
    are kept. MNIST: the four files from the first mirror that answers. EMNIST: NIST's gzip.zip
    (resumed from a partial download when the server allows), of which only this split's five
    members are extracted; the archive is deleted afterwards unless keep_archive (an archive
    found already in dest is used and never deleted). Every file is written to a temp file in
    dest, fsync'ed, validated, then renamed into place. `urlopen(request, timeout)` defaults to
    this module's `urlopen`; progress: True for stderr, a text stream, or None/False for
    silence. Raises MissingDataError
    when the download fails, DataError when what came is invalid.
    """
    return _download(_spec(name), dest, keep_archive=keep_archive, opener=urlopen,
                     timeout=timeout, progress=progress)


def _download(spec: DatasetSpec, dest, *, data_dir=None, keep_archive=False, opener=None,
              timeout=60.0, progress=True) -> Path:
    if progress is True:
        progress = sys.stderr
    elif progress is False:
        progress = None
    dest = Path(dest).expanduser() if dest is not None else cache_dir() / spec.family
    opener = opener or globals()["urlopen"]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(dest, f"cannot create the download folder: {e.strerror or e}") from None
    with _dir_lock(dest, progress):
        todo = [f for f in spec.all_files() if not (dest / f).is_file()
                or not _is_valid(spec, dest / f, f)]
        if not todo:
            return dest
        if spec.family == "mnist":
            _download_mnist(spec, dest, todo, opener, timeout, progress, data_dir)
        else:
            _download_emnist(spec, dest, todo, opener, timeout, progress, data_dir, keep_archive)
    return dest


def _download_failed(spec, data_dir, why: str) -> MissingDataError:
    return MissingDataError(_missing_message(spec, None, data_dir,
                                             reason=f"{spec.name}: download failed: {why}"))


def _download_mnist(spec, dest, todo, opener, timeout, progress, data_dir) -> None:
    net_errors = _network_errors()
    for fname in todo:
        errors = []
        for url in spec.sources(fname):
            tmp = _tmp_path(dest, fname)
            try:
                _fetch_url(url, tmp, opener=opener, timeout=timeout, progress=progress, resume=False)
                try:
                    _validate_file(spec, tmp, fname)
                except DataError as e:
                    errors.append(f"{url}: the downloaded file is invalid: {e}")
                    continue
                _place(tmp, dest / fname)
                break
            except net_errors as e:
                errors.append(f"{url}: {e}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise _download_failed(spec, data_dir, f"{fname}:\n    " + "\n    ".join(errors))


def _find_member(names: list[str], fname: str) -> str | None:
    if EMNIST_MEMBER_DIR + fname in names:
        return EMNIST_MEMBER_DIR + fname
    for n in names:       # some repackagings drop the folder or nest it deeper
        if n.rsplit("/", 1)[-1] == fname:
            return n
    return None


def _file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_emnist(spec, dest, todo, opener, timeout, progress, data_dir, keep_archive) -> None:
    archive = dest / EMNIST_ARCHIVE
    ours = False
    if not archive.is_file():
        part = dest / (EMNIST_ARCHIVE + ".part")
        try:
            _fetch_url(EMNIST_URL, part, opener=opener, timeout=timeout, progress=progress, resume=True)
        except _network_errors() as e:
            kept = f" (the partial download {part} is kept: retrying resumes it)" if part.exists() else ""
            raise _download_failed(spec, data_dir, f"{EMNIST_URL}: {e}{kept}") from None
        md5 = _file_md5(part)
        if md5 != EMNIST_ARCHIVE_MD5:
            warnings.warn(f"{EMNIST_URL}: MD5 {md5} differs from the published {EMNIST_ARCHIVE_MD5}; "
                          f"the members are verified on their own", stacklevel=3)
        _place(part, archive)
        ours = True
    try:
        _extract_emnist(spec, archive, dest, todo)
    except DataError:
        if ours:        # a corrupt download: start afresh next time
            archive.unlink(missing_ok=True)
        raise
    if ours and not keep_archive:
        archive.unlink(missing_ok=True)


def _extract_emnist(spec, archive: Path, dest: Path, todo: list[str]) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise _fail(archive, f"not a readable zip archive: {e}") from None
    with zf:
        names = zf.namelist()
        for fname in todo:
            member = _find_member(names, fname)
            if member is None:
                raise _fail(archive, f"has no member {EMNIST_MEMBER_DIR}{fname}: is it EMNIST's "
                                     f"{EMNIST_ARCHIVE} from {EMNIST_URL}?")
            tmp = _tmp_path(dest, fname)
            try:
                with zf.open(member) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                _validate_file(spec, tmp, fname)
                _place(tmp, dest / fname)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise _fail(archive, f"member {member} is corrupt: {e}") from None
            except DataError as e:
                raise _fail(archive, f"member {member} is invalid: {e}") from None
            finally:
                tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Pixels and batches
# --------------------------------------------------------------------------------------------



class BatchIterator:
    """Shuffled minibatches of a uint8 image set, converted to float one batch at a time.

    Iterating yields the rest of the current epoch: (x float32 (B,1,28,28) in [-1,1], y int64
    (B,)). `next_batch()` draws one batch, rolling over into the next epoch. The images array
    is kept by reference (never copied or converted as a whole); each epoch shuffles an index
    permutation. With drop_last=False the last batch of an epoch may be short.

    Randomness: at construction the iterator draws one seed from `rng` (a numpy Generator, or
    an int seed) and shuffles with its own generator from then on, so sharing `rng` with other
    consumers (noise sampling) neither perturbs nor is perturbed by the batch order.

    Resume: state_dict() is a small dict of plain Python values (JSON-safe): the epoch, the
    position in its permutation and the generator state the permutation was drawn from.
    load_state_dict() on a fresh iterator over the same data makes it yield exactly the batches
    the original would have yielded next. `epoch` counts finished epochs: it steps as soon as
    the last batch of an epoch is handed out.
    """

    STATE_VERSION = 1

    def __init__(self, images, labels, batch_size, rng, drop_last: bool = True, shuffle: bool = True):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise TypeError(f"images must be a uint8 numpy array (converted per batch), got {got}")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[1] != 1):
            raise ValueError(f"images must be shaped (N,H,W) or (N,1,H,W), got {images.shape}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        n = len(images)
        if isinstance(batch_size, bool):
            raise TypeError("batch_size must be an int, got bool")
        try:
            batch_size = operator.index(batch_size)
        except TypeError:
            raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}") from None
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} samples)")
        if isinstance(rng, np.random.Generator):
            seed = int(rng.integers(0, 2 ** 63, dtype=np.int64))
        elif rng is None or isinstance(rng, (bool, float)):
            raise TypeError("rng must be a numpy Generator or an int seed (shuffling is always seeded)")
        else:
            seed = rng
        self.images = images                          # a reference: never copied
        self.labels = labels if labels.dtype == np.int64 else labels.astype(np.int64)
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self._rng = np.random.default_rng(seed)        # PCG64: its state is plain ints
        self.epoch = 0
        self._pos = 0                                  # samples of the permutation handed out
        self._perm: np.ndarray | None = None           # None: the epoch's perm is not drawn yet
        self._perm_state: dict | None = None           # generator state the perm was drawn from
        self._generation = 0                           # invalidates stale `for` loops

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def position(self) -> int:
        """Batches already handed out in the current epoch."""
        return -(-self._pos // self.batch_size)

    def _start_epoch(self) -> None:
        self._perm_state = copy.deepcopy(self._rng.bit_generator.state)
        n = self.num_samples
        self._perm = self._rng.permutation(n) if self.shuffle else np.arange(n)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch, starting a new epoch when the current one is done."""
        if self._perm is None:
            self._start_epoch()
        n, b = self.num_samples, self.batch_size
        lo = self._pos
        hi = min(lo + b, n)
        idx = self._perm[lo:hi]
        x = to_float(self.images[idx])                 # gathers and converts this batch only
        y = self.labels[idx]
        self._pos = hi
        if hi + (b if self.drop_last else 1) > n:      # no batch left in this epoch
            self.epoch += 1
            self._pos = 0
            self._perm = None
        return x, y

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._generation += 1
        return self._epoch_iter(self._generation, self.epoch)

    def _epoch_iter(self, generation: int, epoch: int):
        while self.epoch == epoch:
            if generation != self._generation:
                raise RuntimeError("this BatchIterator was restarted (iter() again or load_state_dict) "
                                   "while an older loop over it was still running")
            yield self.next_batch()

    def state_dict(self) -> dict:
        state = self._perm_state if self._perm is not None else self._rng.bit_generator.state
        return {
            "version": self.STATE_VERSION,
            "epoch": self.epoch,
            "position": self._pos,
            "rng_state": copy.deepcopy(state),
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"epoch", "position", "rng_state", "num_samples", "batch_size", "drop_last",
                   "shuffle"} - set(state)
        if missing:
            raise ValueError(f"BatchIterator state lacks {', '.join(sorted(missing))}")
        if state.get("version", 1) != self.STATE_VERSION:
            raise ValueError(f"BatchIterator state version {state.get('version')} is not supported")
        for key in ("num_samples", "batch_size", "drop_last", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"BatchIterator state is for {key}={state[key]!r}, this iterator has "
                                 f"{key}={getattr(self, key)!r}")
        pos, epoch = int(state["position"]), int(state["epoch"])
        last_start = self.num_samples - (self.batch_size if self.drop_last else 1)
        if epoch < 0 or pos < 0 or pos > last_start or pos % self.batch_size:
            raise ValueError(f"BatchIterator state has an impossible position {pos} (epoch {epoch})")
        try:
            self._rng.bit_generator.state = copy.deepcopy(state["rng_state"])
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"BatchIterator state has an unusable rng_state: {e}") from None
        self.epoch, self._pos = epoch, pos
        self._perm = self._perm_state = None           # redrawn from rng_state at the next batch
        self._generation += 1


# --------------------------------------------------------------------------------------------
# python -m cganraw.data
# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m cganraw.data",
                                description="Fetch (with --download), verify and summarise datasets.")
    p.add_argument("names", nargs="*", default=["mnist"], help="datasets: " + ", ".join(DATASETS))
    p.add_argument("--data-dir", help=f"folder with the files (else ${ENV_DATA_DIR}, then {cache_dir()})")
    p.add_argument("--download", action="store_true", help="fetch missing files into the cache")
    p.add_argument("--keep-archive", action="store_true", help="keep EMNIST's gzip.zip after extraction")
    args = p.parse_args(argv)
    try:
        for name in args.names:
            spec = _spec(name)
            if args.download and not all(locate(spec.name, s, args.data_dir) for s in SPLITS):
                download(spec.name, keep_archive=args.keep_archive)
            for split in SPLITS:
                t0 = time.perf_counter()
                ds = load(spec.name, split, data_dir=args.data_dir)
                counts = np.bincount(ds.labels, minlength=ds.num_classes)
                print(f"{ds.name} {split}: {len(ds)} images, {ds.num_classes} classes "
                      f"({''.join(ds.class_names) if ds.num_classes <= 62 else '...'}), "
                      f"per class {counts.min()}..{counts.max()}, mean pixel {ds.images.mean():.2f}, "
                      f"{time.perf_counter() - t0:.2f} s")
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
