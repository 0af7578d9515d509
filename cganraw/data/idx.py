"""IDX files (MNIST's format), read with every check a corrupt or foreign file can fail.

    a = read_idx("train-images-idx3-ubyte.gz", sha256=..., ndim=3, dtype=np.uint8)
    write_idx("out-idx1-ubyte.gz", labels)          # gzip when the name ends in .gz; atomic

An IDX file is a 4-byte magic 0x0000TTDD (TT the element type, DD the number of dimensions),
DD big-endian uint32 sizes, then the elements big-endian, row-major. Compression is told by
the gzip magic, not by the file name.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib

import numpy as np

from .. import fileio
from .errors import DataError

__all__ = ["read_idx", "write_idx", "IDX_TYPES", "IDX_CODES"]

# IDX type code -> (on-disk big-endian dtype, name)
IDX_TYPES = {
    0x08: (np.dtype("u1"), "unsigned byte"),
    0x09: (np.dtype("i1"), "signed byte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}
# native dtype -> IDX type code
IDX_CODES = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: code for code, (dt, _) in IDX_TYPES.items()}


def shape_str(dims) -> str:
    return "x".join(str(d) for d in dims) if len(dims) else "()"


def fail(path, what: str) -> DataError:
    """A DataError whose message starts with the file it is about."""
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
        raise fail(label, f"cannot read: {e.strerror or e}") from None
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
            raise fail(label, f"gzip stream {what}: {e}") from None
        except OSError as e:   # an I/O error while reading
            raise fail(label, f"cannot read: {e}") from None


def _read_idx_stream(stream, label, compressed, raw_size, sha256, want_ndim, want_dtype):
    header = stream.read(4)
    if len(header) < 4:
        what = "empty" if not header else f"only {len(header)} bytes long"
        raise fail(label, f"not an IDX file: {what} (an IDX header takes at least 8 bytes)")
    magic = int.from_bytes(header, "big")
    if header[:2] != b"\0\0" or header[2] not in IDX_TYPES or header[3] == 0:
        hint = ""
        if header[:1] == b"<":
            hint = " (it looks like an HTML page: a failed download?)"
        elif header[:2] == b"PK":
            hint = " (it is a zip archive)"
        elif header[:2] == b"\0\0" and header[2] not in IDX_TYPES:
            hint = f" (unknown type code 0x{header[2]:02x})"
        elif header[:2] == b"\0\0":
            hint = " (zero dimensions)"
        known = ", ".join(f"0x{c:02x} {n}" for c, (_, n) in IDX_TYPES.items())
        raise fail(label, f"bad magic number 0x{magic:08x}{hint}: not an IDX file; expected "
                           f"0x0000TTDD with TT a type code ({known}) and DD the number of "
                           f"dimensions, e.g. 0x00000803 for images, 0x00000801 for labels")
    disk_dtype, type_name = IDX_TYPES[header[2]]
    nd = header[3]
    dim_bytes = stream.read(4 * nd)
    if len(dim_bytes) < 4 * nd:
        raise fail(label, f"truncated header: magic 0x{magic:08x} announces {nd} dimensions "
                           f"({4 * nd} bytes of sizes), file has {len(dim_bytes)}")
    dims = struct.unpack(f">{nd}I", dim_bytes)
    if want_ndim is not None and nd != want_ndim:
        raise fail(label, f"wrong number of dimensions: header (magic 0x{magic:08x}) says {nd} "
                           f"({shape_str(dims)}), expected {want_ndim}")
    if want_dtype is not None and disk_dtype.newbyteorder("=") != np.dtype(want_dtype):
        raise fail(label, f"wrong element type: magic 0x{magic:08x} says {type_name} "
                           f"(0x{header[2]:02x}), expected {np.dtype(want_dtype)}")
    count = math.prod(dims)
    nbytes = count * disk_dtype.itemsize
    said = f"header says {shape_str(dims)} = {nbytes} bytes of data"
    if disk_dtype.itemsize > 1:
        said = (f"header says {shape_str(dims)} {type_name}s ({disk_dtype.itemsize} bytes each) "
                f"= {nbytes} bytes of data")
    if not compressed:          # the size is known before reading anything
        have = raw_size - 4 - 4 * nd
        if have < nbytes:
            raise fail(label, f"truncated: {said}, file has {have}")
        if have > nbytes:
            raise fail(label, f"{have - nbytes} trailing bytes: {said}, file has {have}")
    try:
        buf = np.empty(count, dtype=disk_dtype)
    except (MemoryError, ValueError):
        raise fail(label, f"{said}: too large to hold in memory (a corrupt header?)") from None
    got = _read_full(stream, memoryview(buf).cast("B"))
    if got < nbytes:
        raise fail(label, f"truncated: {said}, file has {got}")
    extra = _drain(stream)      # for gzip this also reads the trailer, checking CRC and length
    if extra:
        raise fail(label, f"{extra} trailing bytes: {said}, file has {nbytes + extra}")
    if sha256 is not None:
        h = hashlib.sha256(header)
        h.update(dim_bytes)
        h.update(memoryview(buf).cast("B"))
        if h.hexdigest() != sha256.lower():
            raise fail(label, f"SHA-256 mismatch (of the decompressed content): expected {sha256}, "
                               f"got {h.hexdigest()}; the file is corrupt or not the official one: "
                               f"delete it and fetch it again")
    if disk_dtype.byteorder not in ("=", "|"):     # big-endian on disk, little in memory
        buf = buf.byteswap(inplace=True).view(disk_dtype.newbyteorder("="))
    return buf.reshape(dims)


def write_idx(path, array) -> None:
    """Write `array` as an IDX file (gzip-compressed when `path` ends in .gz), atomically."""
    a = np.asarray(array)
    code = IDX_CODES.get(a.dtype.newbyteorder("=") if a.dtype.itemsize > 1 else a.dtype)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {a.dtype}; use one of "
                         + ", ".join(str(d) for d in IDX_CODES))
    if not 1 <= a.ndim <= 255 or any(d >= 2 ** 32 for d in a.shape):
        raise ValueError(f"IDX cannot store shape {a.shape}")
    header = bytes((0, 0, code, a.ndim)) + struct.pack(f">{a.ndim}I", *a.shape)
    payload = header + np.ascontiguousarray(a, dtype=IDX_TYPES[code][0]).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    fileio.atomic_write(path, payload)


