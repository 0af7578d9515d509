"""Counter-based random numbers (Philox4x32-10), drawn where the data lives: on the GPU by
kernels/philox.cu, on the CPU by the NumPy twins here, the same values on every backend.

A draw is named by a Stream: (seed, stream, step, call). The seed is the model's or the
run's; `stream` says what is drawn (the noise z, G's labels, the wrong labels of the mismatch
term, Dropout layer i); `step` is the training step and `call` the draw within it. So a run
needs no generator state to resume: the step, which every checkpoint holds, names every
number the next step draws. Element e of a stream is word e & 3 of
Philox4x32-10(counter = (e >> 2, stream, step, call), key = (seed lo, seed hi)).

Ops (no backward), each as <op>_numpy, <op>_cuda (kernels/philox.cu <op>_v1) and <op>:
    philox_bits           raw uint32 words (the known-answer tests)
    philox_normal         N(0, 1) float32 (Box-Muller in double, rounded once)
    philox_integers       int32 in [low, high), optionally with the first `fold` repeated
    philox_shift_labels   every label moved to another of K classes
    philox_step_draws     a step's noise and D's batch of labels [real | wrong | fake] at once
Dropout draws its mask inside its own kernel (kernels/dropout.cu dropout_forward_v3) from
the same words: `keep_mask_numpy` is its reference.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu, _launch, _workspace

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
MASK32 = np.uint64(0xFFFFFFFF)

# Random123's kat_vectors, "philox4x32 10": counter (4 words), key (2 words) -> 4 words
KNOWN_ANSWERS = (
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
)

# stream ids: what a draw is for
NOISE, FAKE_LABELS, WRONG_LABELS = 1, 2, 3
DROPOUT = 0x100      # + the layer's id
U32 = 2 ** 32
MAX_BLOCKS = 4096    # the kernels grid-stride over blocks of four past this many threads


def _u32(v, what):
    v = int(v)
    if not 0 <= v < U32:
        raise ValueError(f"philox: {what} must lie in [0, 2^32), got {v}")
    return v


@dataclasses.dataclass(frozen=True)
class Stream:
    """One named sequence of random words: seed (64-bit), stream, step, call (32-bit each)."""
    seed: int
    stream: int
    step: int = 0
    call: int = 0

    def __post_init__(self):
        if not 0 <= int(self.seed) < 2 ** 64:
            raise ValueError(f"philox: seed must lie in [0, 2^64), got {self.seed}")
        for name in ("stream", "step", "call"):
            _u32(getattr(self, name), name)

    def words(self):
        """(seed_lo, seed_hi, stream, step, call) as Python ints."""
        s = int(self.seed)
        return s & 0xFFFFFFFF, s >> 32, int(self.stream), int(self.step), int(self.call)

    def kernel_args(self, block0=0):
        """The six trailing uint32 arguments of every philox kernel."""
        return tuple(np.uint32(w) for w in self.words()) + (np.uint32(_u32(block0, "block0")),)


@dataclasses.dataclass(frozen=True)
class Key:
    """The randomness of one training step: the run's seed and the step number."""
    seed: int
    step: int = 0

    def stream(self, stream, call=0):
        return Stream(self.seed, stream, self.step, call)

    @classmethod
    def from_generator(cls, rng):
        """A fresh key drawn from a NumPy Generator (direct API use and tests; the trainer
        names its keys by the run's seed and step)."""
        return cls(int(rng.integers(0, 2 ** 63)), int(rng.integers(0, 2 ** 31)))


def seed_from(source=None):
    """A 64-bit seed from None (OS entropy), an int, a SeedSequence or a Generator."""
    if isinstance(source, np.random.Generator):
        return int(source.integers(0, 2 ** 63))
    if isinstance(source, np.random.SeedSequence):
        return int(source.generate_state(2, np.uint64)[0] >> np.uint64(1))
    if source is None or isinstance(source, (int, np.integer)):
        ss = np.random.SeedSequence(None if source is None else int(source))
        return int(ss.generate_state(2, np.uint64)[0] >> np.uint64(1))
    raise TypeError(f"a seed must be None, an int, a SeedSequence or a Generator, got {type(source).__name__}")


# ---------------------------------------------------------------- the generator in NumPy

def philox4x32_numpy(counter, key):
    """Philox4x32-10, vectorised: counter (4, n) and key (2,) or (2, n) uint32 -> (4, n)."""
    c = [np.asarray(counter[i], dtype=np.uint64) for i in range(4)]
    k0 = np.asarray(key[0], dtype=np.uint64)
    k1 = np.asarray(key[1], dtype=np.uint64)
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + np.uint64(W0)) & MASK32
            k1 = (k1 + np.uint64(W1)) & MASK32
        p0 = M0 * c[0]
        p1 = M1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & MASK32]
    return np.stack(c).astype(np.uint32)


def stream_words_numpy(stream, n, block0=0):
    """Words 0..n-1 of a stream: (n,) uint32 (the Numba twin when it is enabled)."""
    n = int(n)
    lo, hi, sid, step, call = stream.words()
    if _cpu.enabled():
        out = _workspace.empty(n, np.uint32)
        _stream_words_numba(np.uint32(lo), np.uint32(hi), np.uint32(sid), np.uint32(step), np.uint32(call),
                            np.uint32(_u32(block0, "block0")), out, work=n * 8)
        return out
    return _stream_words_reference(stream, n, block0)


def _stream_words_reference(stream, n, block0=0):
    blocks = np.arange(-(-int(n) // 4), dtype=np.uint64) + np.uint64(block0)
    lo, hi, sid, step, call = stream.words()
    full = lambda v: np.full(blocks.shape, v, dtype=np.uint64)  # noqa: E731
    out = philox4x32_numpy((blocks, full(sid), full(step), full(call)), (lo, hi))
    return np.ascontiguousarray(out.T).reshape(-1)[:int(n)]


@_cpu.kernel
def _stream_words_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def words(k0_in, k1_in, c1_in, c2_in, c3_in, block0, out):
        mask, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
        m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
        w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
        n = out.size
        for b in nb.prange((n + 3) // 4):
            c0 = (np.uint64(block0) + np.uint64(b)) & mask
            c1, c2, c3 = np.uint64(c1_in), np.uint64(c2_in), np.uint64(c3_in)
            k0, k1 = np.uint64(k0_in), np.uint64(k1_in)
            for r in range(10):
                if r:
                    k0 = (k0 + w0) & mask
                    k1 = (k1 + w1) & mask
                p0 = m0 * c0
                p1 = m1 * c2
                c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
            e = 4 * b
            if e < n:
                out[e] = c0
            if e + 1 < n:
                out[e + 1] = c1
            if e + 2 < n:
                out[e + 2] = c2
            if e + 3 < n:
                out[e + 3] = c3
    return words


def keep_threshold(p):
    """Dropout keeps an element iff (word >> 8) >= this: u >= p for u = (word >> 8) 2^-24."""
    return int(np.ceil(float(p) * 2 ** 24))


def keep_mask_numpy(shape, p, stream):
    """Dropout's keep mask (bool, `shape`), as dropout_forward_v3 draws it."""
    n = int(np.prod(shape, dtype=np.int64))
    words = stream_words_numpy(stream, n)
    np.right_shift(words, np.uint32(8), out=words)                 # in place: no temporaries
    keep = _workspace.empty(shape, np.bool_)
    np.greater_equal(words.reshape(shape), np.uint32(keep_threshold(p)), out=keep)
    return keep


def _below(words, range_):
    return ((words.astype(np.uint64) * np.uint64(range_)) >> np.uint64(32)).astype(np.int64)


# ---------------------------------------------------------------- references

def philox_bits_numpy(n, stream, block0=0):
    return stream_words_numpy(stream, n, block0)


def philox_normal_numpy(shape, stream):
    n = int(np.prod(shape, dtype=np.int64))
    w = stream_words_numpy(stream, -(-n // 4) * 4).reshape(-1, 2, 2).astype(np.float64)
    unit = (w + 0.5) * 2.0 ** -32
    radius = np.sqrt(-2.0 * np.log(unit[:, :, 0]))
    angle = (2 * np.pi) * unit[:, :, 1]
    z = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)   # (blocks, pair, 2)
    return z.reshape(-1)[:n].astype(np.float32).reshape(shape)


def _fold_index(n, fold):
    i = np.arange(n)
    return np.where((fold > 0) & (i >= fold), i - fold, i)


def philox_integers_numpy(n, low, high, stream, fold=0):
    n = int(n)
    e = _fold_index(n, int(fold))
    words = stream_words_numpy(stream, max(int(e.max()) + 1, 1) if n else 0)
    return (int(low) + _below(words[e], int(high) - int(low))).astype(np.int32)


def philox_shift_labels_numpy(labels, k, stream):
    labels = np.asarray(labels)
    shift = 1 + _below(stream_words_numpy(stream, labels.shape[0]), int(k) - 1)
    return ((labels.astype(np.int64) + shift) % int(k)).astype(np.int32)


def _step_draws_check(real_labels, n_z, k, parts, fold, op):
    if parts not in (2, 3):
        raise ValueError(f"{op}: parts must be 2 (real | fake) or 3 (real | wrong | fake), got {parts}")
    if int(k) < 2:
        raise ValueError(f"{op}: needs k >= 2 classes, got {k}")
    if int(n_z) < 0 or int(fold) < 0:
        raise ValueError(f"{op}: n_z and fold must be >= 0, got {n_z} and {fold}")


def philox_step_draws_numpy(real_labels, n_z, k, key, parts, fold=0):
    """(z (n_z,) float32, labels (parts*N,) int32): philox_normal of key's NOISE stream, and
    [real | wrong (parts 3: philox_shift_labels of WRONG_LABELS) | fake (philox_integers in
    [0, k) of FAKE_LABELS, with fold)]."""
    _step_draws_check(real_labels, n_z, k, parts, fold, "philox_step_draws")
    real = np.asarray(real_labels)
    _launch.check_labels_range(real, int(k), "philox_step_draws: real_labels")
    real = real.astype(np.int32)
    n = real.shape[0]
    z = philox_normal_numpy((int(n_z),), key.stream(NOISE))
    segs = [real]
    if parts == 3:
        segs.append(philox_shift_labels_numpy(real, k, key.stream(WRONG_LABELS)))
    segs.append(philox_integers_numpy(n, 0, k, key.stream(FAKE_LABELS), fold))
    return z, np.concatenate(segs).astype(np.int32)


# ---------------------------------------------------------------- CUDA kernels (kernels/philox.cu)

def _grid(blocks_of_four):
    return _launch.grid_for(max(int(blocks_of_four), 1), max_blocks=MAX_BLOCKS)


def _count(n, op):
    n = int(n)
    if n < 0:
        raise ValueError(f"{op}: a negative count {n}")
    return _launch.element_count(n, op)


def philox_bits_cuda(n, stream, block0=0, version=None):
    op = "philox_bits"
    _launch.pick_version(op, version, 1, (1,))
    out = _launch.empty((int(n),), np.uint32)
    if n:
        grid, block = _grid(-(-int(n) // 4))
        _launch.function("philox", "philox_bits_v1")(grid, block, (out, _count(n, op)) + stream.kernel_args(block0))
    return out


def philox_normal_cuda(shape, stream, version=None, out=None):
    op = "philox_normal"
    _launch.pick_version(op, version, 1, (1,))
    out = _launch.empty(tuple(shape)) if out is None else _launch.arg(out, np.float32, f"{op}: out")
    n = out.size
    if n:
        grid, block = _grid(-(-n // 4))
        _launch.function("philox", "philox_normal_v1")(grid, block, (out, _count(n, op)) + stream.kernel_args())
    return out


def philox_integers_cuda(n, low, high, stream, fold=0, version=None, out=None):
    op = "philox_integers"
    _launch.pick_version(op, version, 1, (1,))
    if not int(high) > int(low):
        raise ValueError(f"{op}: need high > low, got [{low}, {high})")
    out = _launch.empty((int(n),), np.int32) if out is None else _launch.arg(out, np.int32, f"{op}: out")
    if out.size:
        grid, block = _launch.grid_for(out.size, max_blocks=MAX_BLOCKS)
        _launch.function("philox", "philox_integers_v1")(
            grid, block, (out, _count(out.size, op), _launch.i32(low), np.uint32(_u32(int(high) - int(low), "range")),
                          _launch.i32(fold)) + stream.kernel_args())
    return out


def philox_shift_labels_cuda(labels, k, stream, version=None, out=None):
    op = "philox_shift_labels"
    _launch.pick_version(op, version, 1, (1,))
    if int(k) < 2:
        raise ValueError(f"{op}: needs k >= 2 classes, got {k}")
    lab = _launch.labels_arg(labels, k, op)      # int32; range-checked unless marked
    out = _launch.empty(lab.shape, np.int32) if out is None else _launch.arg(out, np.int32, f"{op}: out")
    if lab.size:
        grid, block = _launch.grid_for(lab.size, max_blocks=MAX_BLOCKS)
        _launch.function("philox", "philox_shift_labels_v1")(
            grid, block, (out, lab, _count(lab.size, op), _launch.i32(k)) + stream.kernel_args())
    return out


def philox_step_draws_cuda(real_labels, n_z, k, key, parts, fold=0, version=None):
    """kernels/philox.cu philox_step_draws_v1: philox_step_draws_numpy's values in one launch."""
    op = "philox_step_draws"
    _launch.pick_version(op, version, 1, (1,))
    _step_draws_check(real_labels, n_z, k, parts, fold, op)
    real = _launch.labels_arg(real_labels, k, op)     # int32; range-checked unless marked
    n = int(real.shape[0])
    z = _launch.empty((int(n_z),), np.float32)
    labels = _launch.empty((parts * n,), np.int32)
    total = -(-int(n_z) // 4) + parts * n
    if total:
        seed_lo, seed_hi, _, step, call = key.stream(NOISE).words()
        grid, block = _launch.grid_for(total, max_blocks=MAX_BLOCKS)
        _launch.function("philox", "philox_step_draws_v1")(
            grid, block, (z, labels, real, _count(n_z, op), _count(n, op), _launch.i32(parts), _launch.i32(k),
                          _launch.i32(fold), np.uint32(NOISE), np.uint32(FAKE_LABELS), np.uint32(WRONG_LABELS),
                          np.uint32(seed_lo), np.uint32(seed_hi), np.uint32(step), np.uint32(call)))
    return z, labels


# ---------------------------------------------------------------- public ops: dispatch

def philox_bits(n, stream, block0=0):
    """(n,) uint32: words block0*4 .. block0*4 + n - 1 of the stream."""
    if backend.uses_kernels():
        return philox_bits_cuda(n, stream, block0)
    return philox_bits_numpy(n, stream, block0)


def philox_normal(shape, stream):
    """float32 N(0, 1) of `shape` on the active backend."""
    if backend.uses_kernels():
        return philox_normal_cuda(shape, stream)
    return philox_normal_numpy(tuple(shape), stream)


def philox_integers(n, low, high, stream, fold=0, out=None):
    """(n,) int32 uniform in [low, high); element i >= fold repeats element i - fold when
    fold > 0, written into `out` (a contiguous int32 (n,) array) when given. With low 0 the
    result is marked as labels in [0, high) (no range check later)."""
    if not int(high) > int(low):
        raise ValueError(f"philox_integers: need high > low, got [{low}, {high})")
    if backend.uses_kernels():
        out = philox_integers_cuda(n, low, high, stream, fold, out=out)
    elif out is None:
        out = philox_integers_numpy(n, low, high, stream, fold)
    else:
        out[...] = philox_integers_numpy(n, low, high, stream, fold)
    return _launch.mark_labels_checked(out, high) if int(low) == 0 else out


def philox_shift_labels(labels, k, stream, out=None):
    """(N,) int32: (label + s) mod k with s uniform in [1, k): a wrong label for every item,
    written into `out` (a contiguous int32 (N,) array) when given. labels must lie in [0, k)
    (validated by the caller); the result is marked so."""
    if int(k) < 2:
        raise ValueError(f"philox_shift_labels: needs k >= 2 classes, got {k}")
    if backend.uses_kernels():
        out = philox_shift_labels_cuda(labels, k, stream, out=out)
    elif out is None:
        out = philox_shift_labels_numpy(labels, k, stream)
    else:
        out[...] = philox_shift_labels_numpy(labels, k, stream)
    return _launch.mark_labels_checked(out, k)


def philox_step_draws(real_labels, n_z, k, key, parts, fold=0):
    """A training step's draws for D's batch: (z (n_z,) float32, labels (parts*N,) int32 =
    [real | wrong | fake]), exactly philox_normal(NOISE), philox_shift_labels(WRONG_LABELS)
    (parts 3 only) and philox_integers(0, k, FAKE_LABELS, fold) of `key` beside a copy of
    real_labels; one launch on the kernel backends. The labels are marked as in [0, k)."""
    if backend.uses_kernels():
        z, labels = philox_step_draws_cuda(real_labels, n_z, k, key, parts, fold)
    else:
        z, labels = philox_step_draws_numpy(backend.asnumpy(real_labels), n_z, k, key, parts, fold)
    return z, _launch.mark_labels_checked(labels, k)
