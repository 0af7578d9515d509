"""cganraw.data: IDX reading, EMNIST fix-ups, file lookup, batches (downloads: test_data_download.py).

EMNIST is never on these machines: the tests write IDX files in EMNIST's exact layout
(images transposed per image, letters labelled 1..26, emnist-<split>-mapping.txt). The real
MNIST is used when present ($CGANRAW_DATA_DIR or ../shared/data/mnist).
"""
import gzip
import hashlib
import json
import logging
import os
import string
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cganraw import data as D
from cganraw.data import (
    DATASETS,
    BatchIterator,
    DataError,
    MissingDataError,
    cache_dir,
    load,
    read_idx,
    resolve_name,
    to_float,
    to_uint8,
    write_idx,
)
from cganraw.data.idx import IDX_CODES
from tests.synthetic import BALANCED_CHARS, mapping_text, upright_images, write_emnist  # noqa: F401

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the real user cache or a CGANRAW_DATA_DIR of the machine."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(D.ENV_DATA_DIR, raising=False)
    # a command line run in-process earlier may have stopped cganraw's records reaching caplog
    monkeypatch.setattr(logging.getLogger("cganraw"), "propagate", True)
    return tmp_path / "xdg-cache" / "cganraw"


# ---------------------------------------------------------------------------------------------
# helpers: synthetic files in EMNIST's on-disk layout
# ---------------------------------------------------------------------------------------------

def write_mnist_like(folder, rng, n=50):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", upright_images(n, rng))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def assert_clean_error(excinfo, *needles):
    """A DataError (ValueError) whose message has every needle, with no chained traceback."""
    err = excinfo.value
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    msg = str(err)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return msg


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------

def test_registry_names_classes_and_files():
    expected = {"mnist": 10, "emnist-letters": 26, "emnist-balanced": 47, "emnist-digits": 10,
                "emnist-byclass": 62, "emnist-bymerge": 47, "emnist-mnist": 10}
    assert set(DATASETS) == set(expected) | {"emnist"}
    assert DATASETS["emnist"] is DATASETS["emnist-letters"]
    for name, k in expected.items():
        spec = DATASETS[name]
        assert spec.name == name and spec.num_classes == k and len(spec.class_names) == k
        assert len(set(spec.class_names)) == k
    assert DATASETS["mnist"].class_names == tuple("0123456789")
    assert DATASETS["emnist-letters"].class_names[0] == "A"
    assert DATASETS["emnist-balanced"].class_names[10] == "A"
    assert "".join(DATASETS["emnist-balanced"].class_names) == BALANCED_CHARS
    assert "".join(DATASETS["emnist-byclass"].class_names) == (
        string.digits + string.ascii_uppercase + string.ascii_lowercase)
    letters = DATASETS["emnist-letters"]
    assert letters.split_files("test") == {
        "images": "emnist-letters-test-images-idx3-ubyte.gz",
        "labels": "emnist-letters-test-labels-idx1-ubyte.gz",
        "mapping": "emnist-letters-mapping.txt"}
    assert letters.transposed and letters.label_offset == 1
    assert not DATASETS["emnist-balanced"].label_offset
    mnist = DATASETS["mnist"]
    assert sorted(mnist.all_files()) == sorted(MNIST_FILES)
    assert all(len(mnist.digest(f)) == 64 for f in MNIST_FILES)
    assert mnist.digest("train-images-idx3-ubyte.gz") == (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db")


def test_resolve_name():
    assert resolve_name("emnist") == "emnist-letters"
    assert resolve_name("MNIST") == "mnist"
    assert resolve_name(" EMNIST_Balanced ") == "emnist-balanced"
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'.*mnist.*emnist-byclass"):
        resolve_name("cifar10")
    with pytest.raises(ValueError, match="unknown split"):
        load("mnist", split="validation")


def test_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "cganraw"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == Path.home() / ".cache" / "cganraw"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "cganraw"


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("ext", ["", ".gz"])
def test_idx_roundtrip(tmp_path, rng, dtype, ext):
    a = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = tmp_path / f"x-idx3{ext}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype).newbyteorder("=") and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    raw = gzip.decompress(path.read_bytes()) if ext else path.read_bytes()
    assert raw[:4] == bytes((0, 0, IDX_CODES[np.dtype(dtype)], 3))
    assert read_idx(path, sha256=hashlib.sha256(raw).hexdigest()).shape == a.shape


def test_idx_gzip_told_by_magic_not_extension(tmp_path, rng):
    a = rng.integers(0, 255, (4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", a)
    (tmp_path / "compressed-without-ext").write_bytes((tmp_path / "a.gz").read_bytes())
    write_idx(tmp_path / "raw", a)
    (tmp_path / "raw-named.gz").write_bytes((tmp_path / "raw").read_bytes())
    for name in ("compressed-without-ext", "raw-named.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)


@pytest.fixture
def idx_bytes(rng):
    """(header+data bytes) of a 10x28x28 uint8 image IDX file."""
    a = rng.integers(0, 255, (10, 28, 28), dtype=np.uint8)
    return bytes((0, 0, 8, 3)) + np.array([10, 28, 28], ">u4").tobytes() + a.tobytes()


def _corrupt_cases(good):
    n = len(good)
    return {
        "bad magic": (b"\x12\x34" + good[2:], "bad magic number 0x12340803"),
        "unknown type code": (good[:2] + b"\x07" + good[3:], "unknown type code 0x07"),
        "html page": (b"<html><body>404</body></html>", "HTML"),
        "empty": (b"", "empty"),
        "header cut": (good[:10], "truncated header"),
        "truncated data": (good[:n - 100], "truncated: header says 10x28x28 = 7840 bytes of data, file has 7740"),
        "trailing bytes": (good + b"\0" * 7, "7 trailing bytes"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases(b"x" * 32)))
@pytest.mark.parametrize("ext", ["", ".gz"])
def test_idx_corrupt_files_raise_dataerror(tmp_path, idx_bytes, case, ext):
    content, needle = _corrupt_cases(idx_bytes)[case]
    path = tmp_path / f"train-images-idx3-ubyte{ext}"
    path.write_bytes(gzip.compress(content) if ext else content)
    with pytest.raises(DataError) as ei:
        read_idx(path)
    assert_clean_error(ei, str(path), needle)


def test_idx_wrong_dims_and_type(tmp_path, rng):
    path = tmp_path / "labels-idx2-ubyte.gz"
    write_idx(path, rng.integers(0, 9, (5, 2), dtype=np.uint8))
    with pytest.raises(DataError) as ei:
        read_idx(path, ndim=1)
    assert_clean_error(ei, str(path), "wrong number of dimensions", "says 2 (5x2), expected 1")
    write_idx(path, np.zeros((5,), np.float32))
    with pytest.raises(DataError) as ei:
        read_idx(path, dtype=np.uint8)
    assert_clean_error(ei, str(path), "float", "expected uint8")


def test_idx_corrupt_gzip(tmp_path, rng):
    a = rng.integers(0, 255, (200, 28, 28), dtype=np.uint8)   # incompressible noise
    good = tmp_path / "good.gz"
    write_idx(good, a)
    blob = bytearray(good.read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 8] = bytes(b ^ 0xFF for b in blob[mid:mid + 8])
    flipped = tmp_path / "flipped-idx3-ubyte.gz"
    flipped.write_bytes(bytes(blob))
    with pytest.raises(DataError) as ei:
        read_idx(flipped)
    assert_clean_error(ei, str(flipped), "gzip")

    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(good.read_bytes()[: len(blob) * 2 // 3])
    with pytest.raises(DataError) as ei:
        read_idx(cut)
    assert_clean_error(ei, str(cut), "gzip stream ends early")

    crc = bytearray(good.read_bytes())          # data intact, CRC-32 trailer wrong
    crc[-8] ^= 0xFF
    badcrc = tmp_path / "crc-idx3-ubyte.gz"
    badcrc.write_bytes(bytes(crc))
    with pytest.raises(DataError) as ei:
        read_idx(badcrc)
    assert_clean_error(ei, str(badcrc), "CRC")


def test_idx_digest_mismatch_and_missing_file(tmp_path, rng):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, rng.integers(0, 9, 20, dtype=np.uint8))
    with pytest.raises(DataError) as ei:
        read_idx(path, sha256="ab" * 32)
    got = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    assert_clean_error(ei, str(path), "SHA-256 mismatch", "expected " + "ab" * 32, "got " + got)
    with pytest.raises(DataError) as ei:
        read_idx(tmp_path / "nope.gz")
    assert_clean_error(ei, "nope.gz", "cannot read")


# ---------------------------------------------------------------------------------------------
# EMNIST layout on synthetic files
# ---------------------------------------------------------------------------------------------

def test_load_emnist_letters_upright_and_shifted(tmp_path, rng):
    truth = write_emnist(tmp_path / "emnist", "letters", rng)      # <data_dir>/emnist/
    for split in ("train", "test"):
        ds = load("emnist", split=split, data_dir=tmp_path)
        up, labels = truth[split]
        assert ds.name == "emnist-letters" and ds.split == split
        assert ds.images.dtype == np.uint8 and ds.images.shape == up.shape
        assert ds.images.flags.c_contiguous
        assert (ds.images[:, 2:5, 4:24] == 255).all()               # a bar at the top ...
        assert (ds.images[:, 8:24, 2:5] < 255).all()                # ... not at the left
        np.testing.assert_array_equal(ds.images, up)
        assert ds.labels.dtype == np.int64
        np.testing.assert_array_equal(ds.labels, labels)
        assert 0 <= ds.labels.min() and ds.labels.max() <= 25
        assert ds.class_names == list(string.ascii_uppercase) and ds.num_classes == 26
        assert len(ds) == len(up)


def test_load_emnist_balanced_raw_files_in_data_dir(tmp_path, rng):
    truth = write_emnist(tmp_path, "balanced", rng, gz=False)       # directly in data_dir
    ds = load("emnist-balanced", data_dir=tmp_path)
    np.testing.assert_array_equal(ds.images, truth["train"][0])
    np.testing.assert_array_equal(ds.labels, truth["train"][1])
    assert ds.num_classes == 47 and ds.class_names[10] == "A" and ds.class_names[36] == "a"
    assert "".join(ds.class_names) == BALANCED_CHARS


def test_lookup_order_data_dir_env_cache(tmp_path, rng, monkeypatch, isolated_env):
    write_emnist(tmp_path / "explicit", "digits", rng, n=(11, 3))
    write_emnist(tmp_path / "env" / "emnist", "digits", rng, n=(12, 3))
    write_emnist(isolated_env / "emnist", "digits", rng, n=(13, 3))
    assert len(load("emnist-digits")) == 13                          # the user cache
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "env"))
    assert len(load("emnist-digits")) == 12                          # env beats the cache
    assert len(load("emnist-digits", data_dir=tmp_path / "explicit")) == 11   # data_dir beats env
    # a data_dir (a folder) lacking the files falls through to the next place, saying so
    (tmp_path / "empty").mkdir()
    assert len(load("emnist-digits", data_dir=tmp_path / "empty")) == 12
    unzipped = tmp_path / "unzipped"
    write_emnist(unzipped / "gzip", "digits", rng, n=(14, 3))        # gzip.zip unzipped in place
    assert len(load("emnist-digits", data_dir=unzipped)) == 14


def test_emnist_bad_labels_counts_and_mapping(tmp_path, rng):
    write_emnist(tmp_path, "letters", rng, n=(30, 10))
    lab = tmp_path / "emnist-letters-train-labels-idx1-ubyte.gz"
    img = tmp_path / "emnist-letters-train-images-idx3-ubyte.gz"

    bad = np.full(30, 5, np.uint8)
    bad[7] = 0                                          # letters are 1..26 on disk: 0 is invalid
    write_idx(lab, bad)
    with pytest.raises(DataError) as ei:
        load("emnist", data_dir=tmp_path)
    assert_clean_error(ei, str(lab), "1 labels out of range", "expected 1..26", "index 7")
    bad[7] = 27
    write_idx(lab, bad)
    with pytest.raises(DataError, match="out of range"):
        load("emnist", data_dir=tmp_path)

    write_idx(lab, np.ones(29, np.uint8))               # one label short
    with pytest.raises(DataError) as ei:
        load("emnist", data_dir=tmp_path)
    assert_clean_error(ei, str(lab), "29 labels", "30 images")

    write_idx(lab, np.ones(30, np.uint8))
    write_idx(img, np.zeros((30, 32, 32), np.uint8))    # not 28x28
    with pytest.raises(DataError) as ei:
        load("emnist", data_dir=tmp_path)
    assert_clean_error(ei, str(img), "32x32")
    write_idx(img, np.zeros((30, 784), np.uint8))       # flattened: 2 dims
    with pytest.raises(DataError) as ei:
        load("emnist", data_dir=tmp_path)
    assert_clean_error(ei, str(img), "dimensions")
    write_idx(img, np.zeros((30, 28, 28), np.uint8))
    assert len(load("emnist", data_dir=tmp_path)) == 30

    mapping = tmp_path / "emnist-letters-mapping.txt"
    for text, needle in [("1 65 97\n1 66 98\n", "appears twice"),
                         ("1 A a\n", "line 1"),
                         ("\n".join(f"{i} {64 + i}" for i in range(0, 26)), "expected classes 1..26")]:
        mapping.write_text(text)
        with pytest.raises(DataError) as ei:
            load("emnist", data_dir=tmp_path)
        assert_clean_error(ei, str(mapping), needle)


def test_mnist_digest_mismatch_on_load(tmp_path, rng):
    write_mnist_like(tmp_path / "mnist", rng)
    with pytest.raises(DataError) as ei:
        load("mnist", data_dir=tmp_path)
    assert_clean_error(ei, "train-images-idx3-ubyte.gz", "SHA-256 mismatch",
                       DATASETS["mnist"].digest("train-images-idx3-ubyte"))


def test_missing_files_offline_message(tmp_path):
    (tmp_path / "nowhere").mkdir()
    with pytest.raises(MissingDataError) as ei:
        load("emnist-balanced", split="test", data_dir=tmp_path / "nowhere")
    assert_clean_error(ei, "emnist-balanced-test-images-idx3-ubyte.gz",
                       "emnist-balanced-test-labels-idx1-ubyte.gz", "emnist-balanced-mapping.txt",
                       D.EMNIST_URL, "--data-dir", "CGANRAW_DATA_DIR", str(tmp_path / "nowhere"),
                       str(cache_dir()), "download=True")
    with pytest.raises(MissingDataError) as ei:
        load("mnist")
    assert_clean_error(ei, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "https://ossci-datasets.s3.amazonaws.com/mnist/", "--data-dir", "CGANRAW_DATA_DIR")


def test_missing_message_names_incomplete_folder(tmp_path, rng):
    write_emnist(tmp_path, "letters", rng)
    (tmp_path / "emnist-letters-mapping.txt").unlink()
    with pytest.raises(MissingDataError, match="has only: emnist-letters-train-images"):
        load("emnist", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# the real MNIST
# ---------------------------------------------------------------------------------------------

def test_data_dir_that_is_not_a_folder_is_an_error(tmp_path, rng, monkeypatch, isolated_env, caplog):
    write_emnist(tmp_path / "env", "digits", rng, n=(12, 3))
    write_emnist(isolated_env, "digits", rng, n=(13, 3))
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "env"))
    for missing in (tmp_path / "typo", "~/surely-no-such-folder-cganraw"):
        for call in (lambda: load("emnist-digits", data_dir=missing),
                     lambda: load("emnist-digits", data_dir=missing, download=True),
                     lambda: D.locate("emnist-digits", "test", data_dir=missing)):
            with pytest.raises(DataError) as ei:        # never the env folder or the cache
                call()
            assert not isinstance(ei.value, MissingDataError)
            assert_clean_error(ei, "emnist-digits", str(Path(missing).expanduser()), "does not exist",
                               "--data-dir")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(DataError) as ei:
        load("emnist-digits", data_dir=a_file)
    assert_clean_error(ei, str(a_file), "is not a folder")
    # an existing folder without the files falls through, with a warning naming both
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="cganraw.data"):
        assert len(load("emnist-digits", data_dir=tmp_path / "empty")) == 12
    assert str(tmp_path / "empty") in caplog.text and str(tmp_path / "env") in caplog.text
    # a $CGANRAW_DATA_DIR that is not a folder is skipped with a warning
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "gone"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cganraw.data"):
        assert len(load("emnist-digits")) == 13
    assert "gone" in caplog.text and "ignored" in caplog.text


# ---------------------------------------------------------------------------------------------
# python -m cganraw.data
# ---------------------------------------------------------------------------------------------

def run_data_cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env_extra or {})}
    env.pop("CGANRAW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cganraw.data", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_summarises_and_fails_in_one_line(tmp_path, rng):
    write_emnist(tmp_path / "emnist", "balanced", rng, n=(94, 47))
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), D.ENV_DATA_DIR: ""}
    r = run_data_cli("emnist-balanced", "--data-dir", tmp_path, env_extra=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("emnist-balanced train: 94 images, 47 classes")
    assert BALANCED_CHARS in lines[0] and lines[1].startswith("emnist-balanced test: 47 images")
    for args, needle in [(("mnist", "--data-dir", tmp_path / "typo"), "does not exist"),
                         (("emnist-digits", "--data-dir", tmp_path), "data files not found"),
                         (("cifar10",), "unknown dataset")]:
        r = run_data_cli(*args, env_extra=env)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and needle in r.stderr
        assert "Traceback" not in r.stderr
    r = run_data_cli("mnist", "--timeout", "-1", env_extra=env)
    assert r.returncode == 2 and "positive" in r.stderr


# ---------------------------------------------------------------------------------------------
# the real MNIST
# ---------------------------------------------------------------------------------------------

def test_real_mnist(mnist_dir, tmp_path):
    spec = DATASETS["mnist"]
    for split in D.SPLITS:                      # the registry's digests match the real files
        for path in D.locate("mnist", split, data_dir=mnist_dir).values():
            read_idx(path, sha256=spec.digest(path.name))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "mnist").symlink_to(mnist_dir)
    t0 = time.perf_counter()
    train = load("mnist", "train", data_dir=mnist_dir)
    test = load("mnist", "test", data_dir=tmp_path / "root")      # via <root>/mnist/
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"loading MNIST took {elapsed:.1f} s"
    for ds, n, first, mean in ((train, 60000, [5, 0, 4, 1, 9], 33.318), (test, 10000, [7, 2, 1, 0, 4], 33.791)):
        assert ds.images.shape == (n, 28, 28) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
        assert ds.labels[:5].tolist() == first
        counts = np.bincount(ds.labels, minlength=10)
        assert len(counts) == 10 and counts.min() > n * 0.08 and counts.max() < n * 0.12
        assert abs(ds.images.mean() - mean) < 0.01
        assert ds.images.min() == 0 and ds.images.max() == 255
        assert 0.75 < (ds.images == 0).mean() < 0.85        # white strokes on black
        assert ds.class_names == list("0123456789")
        ink = ds.images[:, 4:24, 4:24].astype(np.int64).sum() / ds.images.astype(np.int64).sum()
        assert ink > 0.95                                  # centred digits
    x = to_float(train.images[:256])
    assert x.shape == (256, 1, 28, 28) and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8(x), train.images[:256])


def test_real_mnist_via_env(mnist_dir, monkeypatch):
    monkeypatch.setenv(D.ENV_DATA_DIR, mnist_dir)
    assert len(load("mnist", "test")) == 10000


# ---------------------------------------------------------------------------------------------
# pixels
# ---------------------------------------------------------------------------------------------

def test_to_float_to_uint8_roundtrip():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = to_float(u)
    assert x.dtype == np.float32 and x.shape == (1, 1, 16, 16)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(x.ravel(), np.arange(256) / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(to_uint8(x), u)
    np.testing.assert_array_equal(to_uint8(x[:, 0]), u)
    np.testing.assert_array_equal(to_uint8(x.astype(np.float64)), u)
    assert to_float(u[:, None]).shape == (1, 1, 16, 16)
    wild = np.array([[[-3.0, 5.0, np.nan, 0.0, 0.999, -0.999]]])
    assert to_uint8(wild).tolist() == [[[0, 255, 0, 128, 255, 0]]]
    with pytest.raises(TypeError):
        to_float(u.astype(np.float32))
    with pytest.raises(TypeError):
        to_uint8(u)
    with pytest.raises(ValueError):
        to_float(np.zeros((2, 3, 28, 28), np.uint8))


# ---------------------------------------------------------------------------------------------
# BatchIterator
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def toy(rng):
    n = 1000
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64)     # label = index, to trace every sample


def _epoch(it):
    return [(x.copy(), y.copy()) for x, y in it]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(xa, xb) and np.array_equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def test_batches_cover_each_index_once(toy):
    images, labels = toy
    it = BatchIterator(images, labels, 64, np.random.default_rng(0))
    assert len(it) == 1000 // 64
    batch = _epoch(it)
    assert len(batch) == 15 and it.epoch == 1
    seen = np.concatenate([y for _, y in batch])
    assert len(np.unique(seen)) == len(seen) == 15 * 64
    for x, y in batch:
        assert x.dtype == np.float32 and x.shape == (64, 1, 28, 28) and y.dtype == np.int64
        assert -1.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(x, to_float(images[y]))
    assert not np.array_equal(seen, np.sort(seen))          # shuffled
    again = np.concatenate([y for _, y in it])              # a new order in epoch 2
    assert not np.array_equal(seen, again)

    full = BatchIterator(images, labels, 64, np.random.default_rng(0), drop_last=False)
    assert len(full) == 16
    batch = _epoch(full)
    assert [len(y) for _, y in batch] == [64] * 15 + [40]
    np.testing.assert_array_equal(np.sort(np.concatenate([y for _, y in batch])), labels)

    ordered = BatchIterator(images, labels, 100, 0, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([y for _, y in ordered]), labels)


def test_batches_are_seeded(toy):
    images, labels = toy
    a = _epoch(BatchIterator(images, labels, 50, np.random.default_rng(3)))
    b = _epoch(BatchIterator(images, labels, 50, np.random.default_rng(3)))
    c = _epoch(BatchIterator(images, labels, 50, np.random.default_rng(4)))
    assert _same(a, b) and not _same(a, c)
    # its own generator: drawing from the shared rng afterwards does not change the order
    shared = np.random.default_rng(3)
    it = BatchIterator(images, labels, 50, shared)
    first = next(iter(it))
    shared.normal(size=1000)
    assert np.array_equal(first[1], a[0][1]) and _same(_epoch(it), a[1:])


def test_no_whole_set_copy(rng):
    n = 20000
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    it = BatchIterator(images, labels, 100, np.random.default_rng(0))
    assert it.images is images and it.labels is labels
    tracemalloc.start()
    try:
        for x, y in it:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_float = n * 28 * 28 * 4
    assert peak < full_float / 20, f"peak {peak} bytes during an epoch: looks like a whole-set copy"


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("stop_after", [0, 5, 15, 16, 23])
def test_resume_mid_epoch(toy, drop_last, shuffle, stop_after):
    images, labels = toy
    make = lambda seed: BatchIterator(images, labels, 64, np.random.default_rng(seed),
                                      drop_last=drop_last, shuffle=shuffle)
    ref = make(11)
    per_epoch = len(ref)
    expected = [b for _ in range(3) for b in _epoch(ref)]

    run = make(11)
    got = []
    while len(got) < stop_after:                  # interrupted by a `break`, mid-epoch or not
        for x, y in run:
            got.append((x, y))
            if len(got) == stop_after:
                break
    state = json.loads(json.dumps(run.state_dict()))   # survives a JSON checkpoint
    assert state["epoch"] == stop_after // per_epoch

    resumed = make(999)                           # another seed: the state must carry it all
    resumed.load_state_dict(state)
    while resumed.epoch < 3:
        got.extend(_epoch(resumed))
    assert _same(got, expected)


def test_next_batch_rolls_over_and_state_roundtrip(toy):
    images, labels = toy
    it = BatchIterator(images, labels, 300, np.random.default_rng(5))
    ys = [it.next_batch()[1] for _ in range(7)]          # 3 per epoch
    assert it.epoch == 2 and it.position == 1
    assert len(np.unique(np.concatenate(ys[:3]))) == 900
    twin = BatchIterator(images, labels, 300, np.random.default_rng(0))
    twin.load_state_dict(it.state_dict())
    for _ in range(5):
        np.testing.assert_array_equal(it.next_batch()[1], twin.next_batch()[1])


def test_stale_loop_is_refused(toy):
    images, labels = toy
    it = BatchIterator(images, labels, 100, np.random.default_rng(0))
    old = iter(it)
    next(old)
    new = iter(it)
    next(new)
    with pytest.raises(RuntimeError, match="restarted"):
        next(old)


def test_batch_iterator_argument_checks(toy):
    images, labels = toy
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="positive"):
        BatchIterator(images, labels, 0, rng)
    with pytest.raises(ValueError, match="larger than the dataset"):
        BatchIterator(images, labels, 1001, rng)
    with pytest.raises(TypeError):
        BatchIterator(images, labels, 32.0, rng)
    with pytest.raises(ValueError, match="1000 images but 999 labels"):
        BatchIterator(images, labels[:-1], 32, rng)
    with pytest.raises(TypeError, match="uint8"):
        BatchIterator(to_float(images[:10]), labels[:10], 2, rng)
    with pytest.raises(TypeError, match="rng"):
        BatchIterator(images, labels, 32, None)
    assert len(BatchIterator(images, labels, 1000, rng)) == 1
    it = BatchIterator(images, labels, 32, rng)
    state = it.state_dict()
    other = BatchIterator(images, labels, 64, rng)
    with pytest.raises(ValueError, match="batch_size=32"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="impossible position"):
        it.load_state_dict({**state, "position": 5})
    with pytest.raises(ValueError, match="lacks"):
        it.load_state_dict({"epoch": 0})
