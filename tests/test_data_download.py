"""cganraw.data downloads, through pooch and requests for real, against an HTTP server on
127.0.0.1 run by the test (no network): mirrors, MD5 checks, a truncated and an interrupted
download, NIST's gzip.zip with only the split asked for extracted, and the per-split counts.

EMNIST is never on these machines: the served gzip.zip is synthetic, in NIST's exact layout
(gzip/emnist-<split>-..., images transposed, letters labelled 1..26).
"""
import gzip
import hashlib
import http.server
import io
import logging
import os
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cganraw import data as D
from cganraw.data import DATASETS, DataError, MissingDataError, load, sources, write_idx
from tests.synthetic import upright_images, write_emnist

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
ZIP_COUNTS = (40, 12)          # images per split (train, test) in the synthetic gzip.zip


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the real user cache, a CGANRAW_DATA_DIR of the machine, or a proxy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv(D.ENV_DATA_DIR, raising=False)
    # a command line run in-process earlier may have stopped cganraw's records reaching caplog
    monkeypatch.setattr(logging.getLogger("cganraw"), "propagate", True)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return tmp_path / "xdg-cache" / "cganraw"


def assert_clean_error(excinfo, *needles):
    err = excinfo.value
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    msg = str(err)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return msg


def leftovers(folder):
    """Anything a download may leave behind: temp files, staging folders, archives."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return [p.name for p in folder.iterdir()
            if sources._POOCH_TEMP.fullmatch(p.name) or p.name.endswith((".tmp", ".part", ".zip", ".unzip"))]


# ---------------------------------------------------------------------------------------------
# a local HTTP server
# ---------------------------------------------------------------------------------------------

class LocalServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1. faults[path] is a list used up one
    request at a time: 'drop' announces the whole body and closes the connection halfway (an
    interrupted download); 'short' serves the first half as a complete answer (a truncated
    file); '404' answers Not Found."""

    def __init__(self):
        self.files, self.faults, self.requests = {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("User-Agent")))
                queue = server.faults.get(self.path) or []
                fault = queue.pop(0) if queue else None
                if self.path not in server.files or fault == "404":
                    self.send_error(404)
                    return
                body = server.files[self.path]
                if fault == "short":
                    body = body[: len(body) // 2]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return self.base + path

    def paths(self):
        return [p for p, _ in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def closed_port_url(path="/"):
    """A URL on 127.0.0.1 where nothing listens: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def build_emnist_zip(tmp_path, rng, splits=("letters", "digits"), corrupt=None):
    """A gzip.zip with NIST's member names (gzip/emnist-<split>-...) for `splits`."""
    src = tmp_path / "zip-src"
    truth = {s: write_emnist(src / s, s, rng, n=ZIP_COUNTS) for s in splits}
    if corrupt:
        corrupt(src)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for s in splits:
            for f in sorted((src / s).iterdir()):
                zf.write(f, "gzip/" + f.name)
    return buf.getvalue(), truth


def serve_emnist(server, monkeypatch, blob, md5=True, counts=True):
    """Point cganraw at `server` for gzip.zip; md5/counts: accept this archive's MD5 and the
    synthetic counts in place of NIST's."""
    server.files["/cs_links/EMNIST/gzip.zip"] = blob
    monkeypatch.setattr(sources, "EMNIST_URL", server.url("/cs_links/EMNIST/gzip.zip"))
    if md5:
        monkeypatch.setattr(sources, "EMNIST_ARCHIVE_MD5", hashlib.md5(blob).hexdigest())
    if counts:
        monkeypatch.setattr(sources, "EMNIST_COUNTS", {s: ZIP_COUNTS for s in sources.EMNIST_COUNTS})
    return "/cs_links/EMNIST/gzip.zip"


@pytest.fixture
def emnist_served(server, tmp_path, rng, monkeypatch):
    blob, truth = build_emnist_zip(tmp_path, rng)
    path = serve_emnist(server, monkeypatch, blob)
    return server, path, blob, truth


# ---------------------------------------------------------------------------------------------
# the registry of sources
# ---------------------------------------------------------------------------------------------

def test_published_checksums_sizes_and_counts():
    assert sources.EMNIST_ARCHIVE_MD5 == "58c8d27c78d21e728a6bc7b3cc06412e"
    assert sources.EMNIST_COUNTS["letters"] == (124_800, 20_800)
    assert sources.EMNIST_COUNTS["balanced"] == (112_800, 18_800)
    assert sources.EMNIST_COUNTS["byclass"] == sources.EMNIST_COUNTS["bymerge"] == (697_932, 116_323)
    assert sources.EMNIST_COUNTS["digits"] == (240_000, 40_000)
    assert sources.EMNIST_COUNTS["mnist"] == (60_000, 10_000)
    assert {f"emnist-{s}" for s in sources.EMNIST_COUNTS} == {n for n in DATASETS if n.startswith("emnist-")}
    assert sorted(sources.MNIST_GZ) == sorted(MNIST_FILES)
    assert all(len(md5) == 32 and size > 4000 for md5, size in sources.MNIST_GZ.values())
    assert DATASETS["mnist"].sources("x.gz") == [m + "x.gz" for m in sources.MNIST_MIRRORS]


# ---------------------------------------------------------------------------------------------
# EMNIST: NIST's gzip.zip, only the split asked for
# ---------------------------------------------------------------------------------------------

def test_download_emnist_extracts_only_the_split_atomically(emnist_served, isolated_env, monkeypatch, capfd):
    server, path, blob, truth = emnist_served
    extracted, replaced = [], []
    real_extractall, real_replace = zipfile.ZipFile.extractall, os.replace

    def spy_extractall(self, path=None, members=None, pwd=None):
        extracted.extend(members or ["<everything>"])
        return real_extractall(self, path, members, pwd)

    def spy_replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(zipfile.ZipFile, "extractall", spy_extractall)
    monkeypatch.setattr(os, "replace", spy_replace)
    ds = load("emnist", "train", download=True)
    dest = isolated_env / "emnist"
    wanted = sorted(DATASETS["emnist-letters"].all_files())
    assert sorted(extracted) == sorted("gzip/" + f for f in wanted)      # Unzip(members=...)
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == wanted
    assert leftovers(dest) == []                                           # archive deleted too
    for src, dst in replaced:              # each file landed by a rename inside dest
        assert dst.parent == dest and dest in src.parents
    assert sorted(d.name for _, d in replaced) == wanted
    assert server.paths() == [path] and server.requests[0][1].startswith("cganraw/")
    np.testing.assert_array_equal(ds.images, truth["letters"]["train"][0])
    np.testing.assert_array_equal(ds.labels, truth["letters"]["train"][1])
    assert ds.class_names[0] == "A"
    test = load("emnist", "test")          # now in the cache: no download needed
    np.testing.assert_array_equal(test.images, truth["letters"]["test"][0])
    assert len(server.requests) == 1
    out, err = capfd.readouterr()          # not a terminal and no logging set up: silent
    assert out == "" and err == ""


def test_download_emnist_keep_archive_reuse_and_replace(emnist_served, isolated_env, caplog):
    server, path, blob, truth = emnist_served
    bar = io.StringIO()
    with caplog.at_level(logging.INFO, logger="cganraw.data"):
        dest = D.download("emnist-letters", keep_archive=True, progress=bar)
    assert dest == isolated_env / "emnist" and (dest / "gzip.zip").read_bytes() == blob
    assert "gzip.zip" in bar.getvalue() and "100%" in bar.getvalue()     # tqdm's bar
    assert f"downloading {server.url(path)} into {dest}" in caplog.text
    D.download("emnist-digits", progress=None)          # served by the kept archive
    assert len(server.requests) == 1 and (dest / "gzip.zip").exists()   # not ours to delete now
    np.testing.assert_array_equal(load("emnist-digits", "test").images, truth["digits"]["test"][0])
    # an archive in the cache that is not NIST's (wrong MD5) is fetched again, then kept
    (dest / "gzip.zip").write_bytes(b"PK not the archive")
    for f in DATASETS["emnist-digits"].all_files():
        (dest / f).unlink()
    D.download("emnist-digits", progress=None)
    assert len(server.requests) == 2 and (dest / "gzip.zip").read_bytes() == blob


def test_download_emnist_checksum_mismatch(server, tmp_path, rng, monkeypatch, isolated_env):
    blob, _ = build_emnist_zip(tmp_path, rng)
    serve_emnist(server, monkeypatch, blob, md5=False)      # NIST's MD5: this archive fails it
    with pytest.raises(MissingDataError) as ei:
        load("emnist", download=True)
    assert_clean_error(ei, "emnist-letters: download failed", sources.EMNIST_URL, "MD5",
                       "md5:58c8d27c78d21e728a6bc7b3cc06412e", hashlib.md5(blob).hexdigest(),
                       "561,753,746 bytes", "--data-dir")
    assert leftovers(isolated_env / "emnist") == []


def test_download_emnist_truncated(emnist_served, isolated_env):
    server, path, blob, truth = emnist_served
    server.faults[path] = ["short"]             # a complete answer, of half the archive
    with pytest.raises(MissingDataError) as ei:
        load("emnist", download=True)
    assert_clean_error(ei, "download failed", "MD5", hashlib.md5(blob[: len(blob) // 2]).hexdigest())
    dest = isolated_env / "emnist"
    assert leftovers(dest) == [] and not any(dest.glob("emnist-*"))
    ds = load("emnist", download=True)          # the next try gets it whole
    np.testing.assert_array_equal(ds.labels, truth["letters"]["train"][1])


def test_download_emnist_interrupted(emnist_served, isolated_env):
    server, path, blob, truth = emnist_served
    server.faults[path] = ["drop"]              # the connection drops halfway
    with pytest.raises(MissingDataError) as ei:
        load("emnist", download=True)
    assert_clean_error(ei, "download failed", "Connection broken", "IncompleteRead")
    dest = isolated_env / "emnist"
    assert leftovers(dest) == []
    # a kill -9 leaves pooch's temp file and Unzip's staging folder: the next download removes them
    (dest / "tmpab_cd123").write_bytes(blob[:100])
    (dest / sources._STAGING / "gzip").mkdir(parents=True)
    ds = load("emnist", download=True)
    np.testing.assert_array_equal(ds.labels, truth["letters"]["train"][1])
    assert leftovers(dest) == [] and not (dest / sources._STAGING).exists()
    assert server.paths() == [path, path]


def test_download_emnist_not_found_and_offline(emnist_served, monkeypatch, isolated_env):
    server, path, blob, truth = emnist_served
    server.faults[path] = ["404"]
    with pytest.raises(MissingDataError) as ei:
        load("emnist-digits", download=True)
    assert_clean_error(ei, "404", sources.EMNIST_URL, "emnist-digits-train-images-idx3-ubyte.gz")
    monkeypatch.setattr(sources, "EMNIST_URL", closed_port_url("/gzip.zip"))
    with pytest.raises(MissingDataError) as ei:
        load("emnist-bymerge", download=True)
    assert_clean_error(ei, sources.EMNIST_URL, "Connection refused",
                       "emnist-bymerge-train-images-idx3-ubyte.gz", "--data-dir", "CGANRAW_DATA_DIR")
    assert leftovers(isolated_env / "emnist") == []


def test_download_emnist_rejects_a_corrupt_member(server, tmp_path, rng, monkeypatch, isolated_env):
    def truncate_labels(src):                   # a valid gzip of a truncated IDX
        cut = src / "letters" / "emnist-letters-train-labels-idx1-ubyte.gz"
        cut.write_bytes(gzip.compress(gzip.decompress(cut.read_bytes())[:-3]))

    blob, _ = build_emnist_zip(tmp_path, rng, splits=("letters",), corrupt=truncate_labels)
    serve_emnist(server, monkeypatch, blob)
    with pytest.raises(DataError) as ei:
        load("emnist", download=True)
    assert_clean_error(ei, "gzip.zip", "gzip/emnist-letters-train-labels-idx1-ubyte.gz", "truncated")
    dest = isolated_env / "emnist"
    assert not (dest / "emnist-letters-train-labels-idx1-ubyte.gz").exists()
    assert leftovers(dest) == []                # a bad download is not kept


def test_download_emnist_checks_the_papers_counts(server, tmp_path, rng, monkeypatch, isolated_env):
    blob, _ = build_emnist_zip(tmp_path, rng, splits=("letters",))
    serve_emnist(server, monkeypatch, blob, counts=False)    # the real counts: 124,800 / 20,800
    with pytest.raises(DataError) as ei:
        load("emnist", download=True)
    assert_clean_error(ei, "gzip.zip", "gzip/emnist-letters-", "holds 40 images",
                       "EMNIST letters has 124,800 train images", "Cohen et al. 2017")
    assert leftovers(isolated_env / "emnist") == []

    def missing_member(src):
        (src / "letters" / "emnist-letters-mapping.txt").unlink()

    blob, _ = build_emnist_zip(tmp_path / "2", rng, splits=("letters",), corrupt=missing_member)
    serve_emnist(server, monkeypatch, blob)
    with pytest.raises(DataError) as ei:
        load("emnist", download=True)
    assert_clean_error(ei, "gzip.zip", "has no member gzip/emnist-letters-mapping.txt")


# ---------------------------------------------------------------------------------------------
# MNIST: mirrors, one file at a time
# ---------------------------------------------------------------------------------------------

def gz_bytes(folder, name):
    """The .gz bytes of an MNIST file in `folder`, compressing a decompressed copy."""
    p = Path(folder, name)
    if p.is_file():
        return p.read_bytes()
    return gzip.compress(Path(folder, name[:-3]).read_bytes(), compresslevel=1, mtime=0)


def serve_mnist(server, monkeypatch, files, md5_of=None):
    """Mirror 1 refuses connections, mirror 2 is `server` under /m2/. md5_of: files whose MD5
    replaces the published one (the served copies are recompressed)."""
    monkeypatch.setattr(sources, "MNIST_MIRRORS", (closed_port_url("/m1/"), server.url("/m2/")))
    for name, blob in files.items():
        server.files["/m2/" + name] = blob
    if md5_of:
        monkeypatch.setattr(sources, "MNIST_GZ", {
            n: (hashlib.md5(md5_of[n]).hexdigest(), len(md5_of[n])) for n in MNIST_FILES})


def test_download_mnist_falls_back_to_the_next_mirror(server, mnist_dir, monkeypatch, isolated_env):
    files = {f: gz_bytes(mnist_dir, f) for f in MNIST_FILES}
    serve_mnist(server, monkeypatch, files, md5_of=files)
    ds = load("mnist", "test", download=True)
    assert len(ds) == 10000 and ds.labels[:5].tolist() == [7, 2, 1, 0, 4]
    dest = isolated_env / "mnist"
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == sorted(MNIST_FILES)
    assert sorted(server.paths()) == sorted("/m2/" + f for f in MNIST_FILES)
    assert leftovers(dest) == []
    assert len(load("mnist", "train")) == 60000


def test_download_mnist_checksum_mismatch_and_wrong_content(server, tmp_path, rng, monkeypatch, isolated_env):
    fake = {}
    for f in MNIST_FILES:
        n = 50
        a = upright_images(n, rng) if "-images-" in f else rng.integers(0, 10, n).astype(np.uint8)
        write_idx(tmp_path / f, a)
        fake[f] = (tmp_path / f).read_bytes()
    serve_mnist(server, monkeypatch, fake)              # the published MD5s: all fail them
    with pytest.raises(MissingDataError) as ei:
        D.download("mnist", progress=None)
    msg = assert_clean_error(ei, "mnist: download failed", "train-images-idx3-ubyte.gz", "Connection refused",
                             "MD5", "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873", "9,912,422 bytes")
    assert sources.MNIST_MIRRORS[0] + "train-images-idx3-ubyte.gz" in msg
    dest = isolated_env / "mnist"
    assert not any(dest.glob("*-ubyte*")) and leftovers(dest) == []
    # a copy with the expected MD5 whose content is not MNIST: the SHA-256 of the content fails
    serve_mnist(server, monkeypatch, fake, md5_of=fake)
    with pytest.raises(MissingDataError) as ei:
        D.download("mnist", progress=None)
    assert_clean_error(ei, "invalid", "SHA-256 mismatch", DATASETS["mnist"].digest("train-images-idx3-ubyte"))
    assert not any(dest.glob("*-ubyte*")) and leftovers(dest) == []


def test_download_mnist_interrupted_then_resumed_file_by_file(server, mnist_dir, monkeypatch, isolated_env):
    files = {f: gz_bytes(mnist_dir, f) for f in MNIST_FILES}
    serve_mnist(server, monkeypatch, files, md5_of=files)
    server.faults["/m2/t10k-images-idx3-ubyte.gz"] = ["drop"]
    with pytest.raises(MissingDataError) as ei:
        load("mnist", "test", download=True)
    assert_clean_error(ei, "t10k-images-idx3-ubyte.gz", "Connection broken")
    dest = isolated_env / "mnist"
    assert leftovers(dest) == []
    kept = sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))
    assert kept == sorted(MNIST_FILES[:2])     # the files before the failure stay (they are valid)
    assert len(load("mnist", "test", download=True)) == 10000
    fetched = [p.rsplit("/", 1)[1] for p in server.paths()]
    assert fetched.count("train-images-idx3-ubyte.gz") == 1      # not fetched twice
    assert fetched.count("t10k-images-idx3-ubyte.gz") == 2


def test_download_cli(emnist_served, tmp_path, capsys):
    server, path, blob, truth = emnist_served
    from cganraw.data.__main__ import main
    assert main(["emnist-digits", "--download", "--quiet", "--timeout", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("emnist-digits train: 40 images, 10 classes (0123456789)")
    server.faults[path] = ["404"]
    assert main(["emnist-balanced", "--download", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: emnist-balanced: download failed") and err.count("\n") == 1
    assert "404" in err
