"""Shuffled, seeded, resumable minibatches of a uint8 image set, converted one batch at a time.

    it = BatchIterator(ds.images, ds.labels, 64, np.random.default_rng(0))
    for x, y in it:                  # one epoch: x (64,1,28,28) float32 in [-1,1], y (64,) int64
        ...
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Iterator

import numpy as np

from ..images import to_float

__all__ = ["BatchIterator"]


class BatchIterator:
    """Shuffled minibatches of a uint8 image set, converted to float one batch at a time.

    Iterating yields the rest of the current epoch: (x float32 (B,1,28,28) in [-1,1], y int64
    (B,)). `next_batch()` draws one batch, rolling over into the next epoch. The images array
    is kept by reference (never copied or converted as a whole); each epoch shuffles an index
    permutation. With drop_last=False the last batch of an epoch may be short.

    Randomness: at construction the iterator draws one seed from `rng` (a numpy Generator, or
    an int seed) and shuffles with its own generator from then on, so sharing `rng` with other
    consumers (noise sampling) neither perturbs nor is perturbed by the batch order.

    Label groups: with group_size=G > 1 each epoch deals cliques of G images of one label
    (each class shuffled and cut into cliques, its last n_k mod G images sitting the epoch
    out) in a shuffled order, and a batch of B = M*G images puts member j of its clique c at
    row j*M + c: the layout of MinibatchStdDev's groups (row g*M + m is member g of group m),
    so every group of a batch holds one label. B must then be a multiple of G.

    Resume: state_dict() is a small dict of plain Python values (JSON-safe): the epoch, the
    position in its permutation and the generator state the permutation was drawn from.
    load_state_dict() on a fresh iterator over the same data makes it yield exactly the batches
    the original would have yielded next. `epoch` counts finished epochs: it steps as soon as
    the last batch of an epoch is handed out.
    """

    STATE_VERSION = 1

    def __init__(self, images, labels, batch_size, rng, drop_last: bool = True, shuffle: bool = True,
                 variable_size: bool = False, group_size: int = 1):
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
        group_size = operator.index(group_size)
        if group_size < 1:
            raise ValueError(f"group_size must be positive, got {group_size}")
        if group_size > 1:
            if not shuffle:
                raise ValueError("label groups (group_size > 1) are drawn at random: they need shuffle=True")
            if batch_size % group_size:
                raise ValueError(f"batch_size {batch_size} is not a multiple of the label group size {group_size}")
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
        # variable_size: next_batch(size, next_size) draws batches of changing sizes (a rising
        # batch size); positions are then any sample count, not multiples of batch_size
        self.variable_size = bool(variable_size)
        self.group_size = group_size
        # the images an epoch deals: every class's images, less its last n_k mod G with label groups
        self._epoch_len = n
        if group_size > 1:
            if self.labels.min() < 0:
                raise ValueError("label groups need labels >= 0")
            self._epoch_len = int((np.bincount(self.labels) // group_size).sum() * group_size)
        if batch_size > self._epoch_len:
            raise ValueError(f"batch_size {batch_size} is larger than an epoch of label groups of "
                             f"{group_size} ({self._epoch_len} images)")
        self._rng = np.random.default_rng(seed)        # PCG64: its state is plain ints
        self.epoch = 0
        self._pos = 0                                  # samples of the permutation handed out
        self._perm: np.ndarray | None = None           # None: the epoch's perm is not drawn yet
        self._perm_state: dict | None = None           # generator state the perm was drawn from
        self._generation = 0                           # invalidates stale `for` loops

    @property
    def num_samples(self) -> int:
        return len(self.images)

    @property
    def epoch_length(self) -> int:
        """Images dealt per epoch: num_samples, less the odd ones out of label groups."""
        return self._epoch_len

    def __len__(self) -> int:
        n, b = self._epoch_len, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def position(self) -> int:
        """Batches already handed out in the current epoch."""
        return -(-self._pos // self.batch_size)

    def _start_epoch(self) -> None:
        self._perm_state = copy.deepcopy(self._rng.bit_generator.state)
        n = self.num_samples
        if self.group_size == 1:
            self._perm = self._rng.permutation(n) if self.shuffle else np.arange(n)
            return
        g = self.group_size
        cliques = []                                   # (n_k // G, G) image indices per class
        for k in range(int(self.labels.max()) + 1):
            members = self._rng.permutation(np.flatnonzero(self.labels == k))
            cliques.append(members[:len(members) // g * g].reshape(-1, g))
        cliques = np.concatenate(cliques)
        self._perm = cliques[self._rng.permutation(len(cliques))].ravel()

    def next_batch(self, size: int | None = None, next_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The next batch, starting a new epoch when the current one is done. With
        variable_size, `size` is this batch's size and `next_size` the next one's (it
        decides whether this epoch has room for another batch); both default to batch_size.
        The batches are a function of the state and the sizes asked, so a resumed iterator
        asked the same sizes yields the same batches."""
        n = self._epoch_len
        if size is not None or next_size is not None:
            if not self.variable_size:
                raise ValueError("next_batch(size=...) needs BatchIterator(..., variable_size=True)")
            for v in (size, next_size):
                if v is not None and not 0 < int(v) <= n:
                    raise ValueError(f"batch size {v} outside 1..{n}")
                if v is not None and int(v) % self.group_size:
                    raise ValueError(f"batch size {v} is not a multiple of the label group size {self.group_size}")
        b = self.batch_size if size is None else int(size)
        b_next = b if next_size is None else int(next_size)
        if self.variable_size and self.drop_last and self._perm is not None and self._pos + b > n:
            # a larger batch than the previous call's next_size promised: the epoch is over
            self.epoch += 1
            self._pos = 0
            self._perm = None
        if self._perm is None:
            self._start_epoch()
        lo = self._pos
        hi = min(lo + b, n)
        idx = self._perm[lo:hi]
        if self.group_size > 1:                        # clique c's member j to row j*M + c
            idx = idx.reshape(-1, self.group_size).T.ravel()
        x = to_float(self.images[idx])                 # gathers and converts this batch only
        y = self.labels[idx]
        self._pos = hi
        if hi + (b_next if self.drop_last else 1) > n:  # no batch left in this epoch
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
            **({"variable_size": True} if self.variable_size else {}),
            **({"group_size": self.group_size} if self.group_size > 1 else {}),
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
        if bool(state.get("variable_size", False)) != self.variable_size:
            raise ValueError(f"BatchIterator state is for variable_size={state.get('variable_size', False)!r}, "
                             f"this iterator has variable_size={self.variable_size!r}")
        if int(state.get("group_size", 1)) != self.group_size:
            raise ValueError(f"BatchIterator state is for group_size={state.get('group_size', 1)!r}, "
                             f"this iterator has group_size={self.group_size!r}")
        pos, epoch = int(state["position"]), int(state["epoch"])
        last_start = self._epoch_len - (1 if self.drop_last and self.variable_size else
                                         self.batch_size if self.drop_last else 1)
        if epoch < 0 or pos < 0 or pos > last_start or (pos % self.batch_size and not self.variable_size):
            raise ValueError(f"BatchIterator state has an impossible position {pos} (epoch {epoch})")
        try:
            self._rng.bit_generator.state = copy.deepcopy(state["rng_state"])
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"BatchIterator state has an unusable rng_state: {e}") from None
        self.epoch, self._pos = epoch, pos
        self._perm = self._perm_state = None           # redrawn from rng_state at the next batch
        self._generation += 1
