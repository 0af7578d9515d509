"""Where the datasets come from and where they are kept: URLs, mirrors, checksums and sizes,
the user cache, and the downloads (through pooch, with tqdm's progress bar).

    fetch_mnist(dest, ["t10k-images-idx3-ubyte.gz", ...], validate)
    fetch_emnist(dest, "letters", ["emnist-letters-mapping.txt", ...], validate)

MNIST: each file from the first mirror that serves it with its published MD5. EMNIST: NIST's
gzip.zip, checked against its published MD5, of which pooch's Unzip(members=...) extracts only
the files of the split asked for; their image counts are checked against the EMNIST paper.
Every file lands in `dest` by a rename within that folder, after `validate` accepted it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import platformdirs.unix

from .. import __version__, fileio
from .errors import DataError, MissingDataError
from .idx import fail

log = logging.getLogger(__name__)

APP_NAME = "cganraw"

# --- MNIST: the original LeCun files, as mirrored by PyTorch and Google ------------------------

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# file -> (MD5 of the .gz as served, its size in bytes); torchvision publishes the same MD5s
MNIST_GZ = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", 28_881),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", 1_648_877),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", 4_542),
}
# SHA-256 of the decompressed IDX content: checked on every load, whatever the compression
MNIST_IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# --- EMNIST: one archive from NIST holding every split ----------------------------------------

EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_ARCHIVE = "gzip.zip"          # its name in <cache>/emnist/ while it is being used
EMNIST_MEMBER_DIR = "gzip/"          # the archive holds every file under gzip/
EMNIST_ARCHIVE_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"   # as torchvision records it
EMNIST_ARCHIVE_SIZE = 561_753_746
# split -> (training images, test images), from Cohen et al. 2017, "EMNIST: an extension of
# MNIST to handwritten letters", Table II
EMNIST_COUNTS = {
    "byclass": (697_932, 116_323),
    "bymerge": (697_932, 116_323),
    "balanced": (112_800, 18_800),
    "letters": (124_800, 20_800),
    "digits": (240_000, 40_000),
    "mnist": (60_000, 10_000),
}

_STAGING = ".gzip.zip.unzip"                    # Unzip's folder inside dest, emptied after use
_POOCH_TEMP = re.compile(r"tmp[a-z0-9_]{8}")    # pooch's NamedTemporaryFile names


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/cganraw (only an absolute $XDG_CACHE_HOME counts, as the XDG spec says),
    else ~/.cache/cganraw: platformdirs' XDG rules (its Unix flavour on every system, so the
    place is the same everywhere; platformdirs >= 4.11.8 ignores a relative path). Not created."""
    try:
        return platformdirs.unix.Unix(APP_NAME).user_cache_path
    except RuntimeError:        # no home folder at all
        return Path(tempfile.gettempdir()) / f"{APP_NAME}-cache"


class DownloadError(MissingDataError):
    """The server could not be reached, refused, or sent something other than the published file."""


# pooch, tqdm and requests are imported inside the functions that download: importing
# cganraw.data for a training run does not load an HTTP stack.

def _network_errors() -> tuple[type[BaseException], ...]:
    import requests  # pooch's HTTP client
    return (requests.exceptions.RequestException,)


def _one_line(e: BaseException) -> str:
    """What went wrong, in one line: requests wraps urllib3's errors, which hold the reason."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    if isinstance(getattr(e, "reason", None), BaseException):     # urllib3's MaxRetryError
        e = e.reason
    text = e.args[0] if len(e.args) > 1 and isinstance(e.args[0], str) else str(e)
    return " ".join(str(text).split()) or type(e).__name__


@contextlib.contextmanager
def _pooch_quiet():
    """pooch logs each download to stderr through its own handler; ours say the same."""
    import pooch
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _progressbar(progress, label: str, size: int | None):
    """A tqdm bar for pooch, or False. progress: True (stderr, only on a terminal), a text
    stream (always), None/False (none)."""
    if progress is None or progress is False:
        return False
    from tqdm import tqdm
    stream = sys.stderr if progress is True else progress
    bar = tqdm(total=size or 1, desc=label, file=stream, unit="B", unit_scale=True,
               unit_divisor=1024, leave=True, disable=None if progress is True else False)
    if bar.disable:
        bar.close()
        return False
    return bar


def _retrieve(url: str, dest: Path, fname: str, known_hash: str, size: int | None, *,
              timeout: float, progress, processor=None):
    """pooch.retrieve into dest/fname: streamed to a temp file in dest, hash-checked, renamed."""
    import pooch
    bar = _progressbar(progress, fname, size)
    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=1 << 20, timeout=timeout,
                                      headers={"User-Agent": f"{APP_NAME}/{__version__}"})
    log.info("downloading %s into %s", url, dest)
    try:
        with _pooch_quiet():
            return pooch.retrieve(url, known_hash, fname=fname, path=dest, processor=processor,
                                  downloader=downloader)
    finally:
        if bar is not False:
            bar.close()


def _sync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def dir_lock(dest: Path):
    """An exclusive lock on `dest` across processes (POSIX), so two downloads do not collide.
    Holding it, what a killed download left behind (pooch's temp files, Unzip's staging
    folder) is removed."""
    try:
        import fcntl
    except ImportError:       # Windows: no lock, and no cleanup (another process may own them)
        yield
        return
    with open(dest / ".cganraw-download.lock", "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("waiting for another process downloading into %s ...", dest)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            _remove_leftovers(dest)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(dest: Path) -> None:
    for p in dest.iterdir():
        if p.is_file() and _POOCH_TEMP.fullmatch(p.name):
            log.info("removing %s, left by an interrupted download", p)
            p.unlink(missing_ok=True)
    shutil.rmtree(dest / _STAGING, ignore_errors=True)


# --- MNIST ------------------------------------------------------------------------------------

def fetch_mnist(dest: Path, filenames, validate, *, timeout: float = 60.0, progress=True) -> None:
    """Download each of `filenames` into `dest` from the first mirror whose copy has the
    published MD5 and passes validate(path, filename) (which raises DataError). Raises
    DownloadError listing every mirror's failure when no mirror gives a good copy."""
    network = _network_errors()
    for fname in filenames:
        md5, size = MNIST_GZ[fname]
        errors = []
        for mirror in MNIST_MIRRORS:
            url = mirror + fname
            try:
                path = Path(_retrieve(url, dest, fname, f"md5:{md5}", size, timeout=timeout,
                                      progress=progress))
            except network as e:
                errors.append(f"{url}: {_one_line(e)}")
                continue
            except ValueError as e:            # pooch: the MD5 of what came is not the published one
                errors.append(f"{url}: {_one_line(e)} (the file is {size:,} bytes)")
                continue
            try:
                validate(path, fname)
            except DataError as e:
                path.unlink(missing_ok=True)
                errors.append(f"{url}: the downloaded file is invalid: {e}")
                continue
            _sync(path)
            fileio.fsync_dir(dest)
            break
        else:
            raise DownloadError(f"{fname}:\n    " + "\n    ".join(errors))


# --- EMNIST -----------------------------------------------------------------------------------

def fetch_emnist(dest: Path, split: str, filenames, validate, *, keep_archive: bool = False,
                 timeout: float = 60.0, progress=True) -> None:
    """Extract `filenames` (of EMNIST split `split`) from NIST's gzip.zip into `dest`.

    The archive is dest/gzip.zip: used when it is there with the published MD5, downloaded
    otherwise (and deleted afterwards unless keep_archive; one found there is kept). Only the
    members asked for are unzipped, into a staging folder in dest; each must pass
    validate(path, filename) -> its number of items (None for the mapping), and hold as many
    images as the EMNIST paper says, before it is renamed into dest. Raises DownloadError when
    the archive cannot be had, DataError when what it holds is wrong.
    """
    import pooch
    archive = dest / EMNIST_ARCHIVE
    found = archive.is_file()
    members = [EMNIST_MEMBER_DIR + f for f in filenames]
    unzip = pooch.Unzip(members=members, extract_dir=_STAGING)
    if found:
        log.info("using %s (checking its MD5)", archive)
    try:
        _retrieve(EMNIST_URL, dest, EMNIST_ARCHIVE, f"md5:{EMNIST_ARCHIVE_MD5}", EMNIST_ARCHIVE_SIZE,
                  timeout=timeout, progress=progress, processor=unzip)
        _place_members(dest, split, filenames, validate, archive)
    except _network_errors() as e:
        raise DownloadError(f"{EMNIST_URL}: {_one_line(e)}") from None
    except ValueError as e:
        if isinstance(e, DataError):
            if not found:                       # a bad download: start afresh next time
                archive.unlink(missing_ok=True)
            raise
        raise DownloadError(f"{EMNIST_URL}: {_one_line(e)} (NIST's archive is "
                            f"{EMNIST_ARCHIVE_SIZE:,} bytes)") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        if not found:
            archive.unlink(missing_ok=True)
        raise fail(archive, f"not a readable zip archive, or a corrupt member: {e}") from None
    finally:
        shutil.rmtree(dest / _STAGING, ignore_errors=True)
    if not found and not keep_archive:
        archive.unlink(missing_ok=True)


def _place_members(dest: Path, split: str, filenames, validate, archive: Path) -> None:
    staging = dest / _STAGING / EMNIST_MEMBER_DIR
    for fname in filenames:
        member = EMNIST_MEMBER_DIR + fname
        staged = staging / fname
        if not staged.is_file():
            raise fail(archive, f"has no member {member}: is it EMNIST's {EMNIST_ARCHIVE} from "
                                f"{EMNIST_URL}?")
        try:
            count = validate(staged, fname)
        except DataError as e:
            raise fail(archive, f"member {member} is invalid: {e}") from None
        _check_count(archive, member, split, fname, count)
        _sync(staged)
        fileio.place(staged, dest / fname)


def _check_count(archive: Path, member: str, split: str, fname: str, count: int | None) -> None:
    if count is None or split not in EMNIST_COUNTS:
        return
    part = "test" if "-test-" in fname else "train"
    want = EMNIST_COUNTS[split][part == "test"]
    if count != want:
        what = "images" if "-images-" in fname else "labels"
        raise fail(archive, f"member {member} holds {count:,} {what}, but EMNIST {split} has "
                            f"{want:,} {part} images (Cohen et al. 2017): not NIST's archive?")
