"""The evaluation classifier: a small CNN built from our own layers, trained with our Adam
and softmax cross-entropy, that scores generated images (IS, FID, BCIS/WCIS, accuracy).

    Conv2d(1, 8, 3, p=1)  - BN - ReLU - MaxPool(2)     28 -> 14
    Conv2d(8, 16, 3, p=1) - BN - ReLU - MaxPool(2)     14 -> 7
    Conv2d(16, 32, 3, p=1) - BN - ReLU - MaxPool(2)     7 -> 3   (floor, as PyTorch)
    Flatten - Linear(288, F) - ReLU                    -> features (N, F)
    Linear(F, K)                                       -> logits (N, K)

About 15k parameters for F = 32 (the convolutions have no bias: BatchNorm's shift does
that job). `features()` are the penultimate activations, FID's embedding.

    clf = load_or_train("mnist")                # the cached checkpoint, or train and cache it
    p = clf.probs(images)                       # (N, K) softmax, eval mode, batched
    f = clf.features(images)                    # (N, F)

`images` is uint8 (N, 28, 28), white strokes on black as in MNIST, or float (N, 1, 28, 28)
in [-1, 1] (what the generators output).

CLI:  python -m cganraw.classifier train --dataset mnist [--data-dir DIR] [--epochs N] [--out PATH]
      python -m cganraw.classifier test  --dataset mnist [--classifier PATH] [--data-dir DIR]

Progress goes to the `cganraw.classifier` logger (or to the `log` callable given).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cganraw import backend, cli, data, fileio, health, nn
from cganraw.checkpoint import CheckpointError
from cganraw.images import to_float
from cganraw.losses import softmax_cross_entropy
from cganraw.ops.cross_entropy import softmax as _softmax
from cganraw.optim import Adam

__all__ = ["Classifier", "load", "default_path", "train_classifier", "fit_classifier",
           "load_or_train", "softmax_cross_entropy", "random_shift", "main"]

FORMAT = "cganraw-classifier"
VERSION = 1
IMAGE_HW = (28, 28)
DEFAULT_CHANNELS = (8, 16, 32)
DEFAULT_FEATURES = 32
# training defaults: 99.11% on the real MNIST test set, ~3.7 CPU-minutes single-threaded BLAS
# (epochs 4 and 6 gave 99.13% and 99.17%; 3 epochs 98.93%)
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 3e-3
INFER_BATCH = 1000          # images per forward in probs()/features(): bounds memory
MAX_AUGMENT = 4             # MNIST digits sit in a 20x20 box centred in 28x28: a shift of 4 keeps them whole

logger = logging.getLogger("cganraw.classifier")   # not __name__: that is __main__ under -m


def _he_init(module, rng):
    """Kaiming-normal weights for conv/linear (std sqrt(2 / fan_in)), BN weight 1, biases 0:
    the init suits a ReLU classifier better than the GANs' N(0, 0.02)."""
    for _, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.data
            fan_in = int(np.prod(w.shape[1:]))
            w[...] = backend.array_module(w).asarray(
                rng.normal(0.0, math.sqrt(2.0 / fan_in), size=w.shape), dtype=w.dtype)
            if m.bias is not None:
                m.bias.data.fill(0)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill(1)
            m.bias.data.fill(0)


class Classifier(nn.Module):
    """Small CNN classifier of 28x28 grey images into `num_classes` classes."""

    def __init__(self, num_classes, class_names=None, dataset=None, channels=DEFAULT_CHANNELS,
                 features=DEFAULT_FEATURES, seed=0):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"Classifier: num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        names = [str(i) for i in range(self.num_classes)] if class_names is None else [str(c) for c in class_names]
        if len(names) != self.num_classes:
            raise ValueError(f"Classifier: {len(names)} class_names for {self.num_classes} classes")
        self.class_names = names
        self.dataset = dataset
        self.channels = tuple(int(c) for c in channels)
        self.num_features = int(features)
        self.test_accuracy = None      # set by training or load()
        self.info = {}                 # training record kept in the checkpoint
        rng = np.random.default_rng(seed)
        layers, c_in, hw = [], 1, IMAGE_HW[0]
        for c in self.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(c, rng=rng),
                       nn.ReLU(), nn.MaxPool2d(2)]
            c_in, hw = c, hw // 2
        if hw < 1:
            raise ValueError(f"Classifier: {len(self.channels)} pooling stages shrink 28x28 to nothing")
        layers += [nn.Flatten(), nn.Linear(c_in * hw * hw, self.num_features, rng=rng), nn.ReLU()]
        self.body = nn.Sequential(*layers)                       # (N, 1, 28, 28) -> (N, F)
        self.head = nn.Linear(self.num_features, self.num_classes, rng=rng)   # (N, F) -> (N, K)
        _he_init(self, rng)
        self.head.weight.data *= self.head.weight.dtype.type(math.sqrt(0.5))  # no ReLU after it

    # --- the layer protocol ----------------------------------------------------------
    def forward(self, x):
        """x float32 (N, 1, 28, 28) in [-1, 1] (a backend array) -> logits (N, K)."""
        return self.head(self.body(x))

    def backward(self, dlogits):
        return self.body.backward(self.head.backward(dlogits))

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, dataset={self.dataset!r}, channels={self.channels}, "
                f"features={self.num_features}")

    def num_parameters(self):
        return int(sum(p.data.size for p in self.parameters()))

    # --- inference on either image format ---------------------------------------------
    def _prepare(self, images, what):
        """Validate `images`; return a function chunk(lo, hi) -> float32 (B, 1, 28, 28) on the
        classifier's backend, so a large uint8 set is converted one batch at a time."""
        fmt = "uint8 (N, 28, 28) white on black, or float (N, 1, 28, 28) in [-1, 1]"
        if not backend.is_array(images):
            raise TypeError(f"Classifier.{what}: expected an array of images, {fmt}; "
                            f"got {type(images).__name__}")
        shape = tuple(images.shape)
        if images.dtype == np.uint8:
            if images.ndim != 3 or shape[1:] != IMAGE_HW:
                raise ValueError(f"Classifier.{what}: uint8 images must have shape (N, 28, 28), got shape {shape}")
            host = backend.asnumpy(images)
            convert = to_float
        elif images.dtype.kind == "f":
            if images.ndim != 4 or shape[1:] != (1,) + IMAGE_HW:
                raise ValueError(f"Classifier.{what}: float images must have shape (N, 1, 28, 28), got shape {shape}")
            host = images
            if images.size:
                lo, hi = float(images.min()), float(images.max())
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    raise ValueError(f"Classifier.{what}: float images contain NaN or infinite values")
                if lo < -1.001 or hi > 1.001:
                    raise ValueError(f"Classifier.{what}: float images must lie in [-1, 1], got values in "
                                     f"[{lo:.4g}, {hi:.4g}] (uint8 images should keep their dtype)")
            convert = lambda a: a  # noqa: E731
        else:
            raise TypeError(f"Classifier.{what}: expected {fmt}; got dtype {images.dtype} shape {shape}")
        xp = backend.array_module(self.head.weight.data)
        dtype = self.head.weight.dtype

        def chunk(lo, hi):
            return xp.asarray(convert(host[lo:hi]), dtype=dtype)
        return chunk, shape[0]

    def _infer(self, images, what, fn, batch_size):
        chunk, n = self._prepare(images, what)
        with self.inference():
            return [backend.asnumpy(fn(chunk(lo, min(lo + batch_size, n))))
                    for lo in range(0, n, batch_size)]

    def logits(self, images, batch_size=INFER_BATCH):
        """(N, K) float32 logits, eval mode."""
        outs = self._infer(images, "logits", self.forward, batch_size)
        return np.concatenate(outs) if outs else np.zeros((0, self.num_classes), np.float32)

    def probs(self, images, batch_size=INFER_BATCH):
        """(N, K) float64 softmax probabilities, eval mode, batched to bound memory."""
        return _softmax(self.logits(images, batch_size).astype(np.float64))

    def features(self, images, batch_size=INFER_BATCH):
        """(N, F) float32 penultimate activations (FID's embedding), eval mode."""
        outs = self._infer(images, "features", self.body.forward, batch_size)
        return np.concatenate(outs) if outs else np.zeros((0, self.num_features), np.float32)

    def predict(self, images, batch_size=INFER_BATCH):
        """(N,) int64 argmax classes."""
        return self.logits(images, batch_size).argmax(axis=1).astype(np.int64)

    def accuracy(self, images, labels, batch_size=INFER_BATCH):
        labels = np.asarray(backend.asnumpy(labels))
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"Classifier.accuracy: expected labels of shape ({images.shape[0]},), "
                             f"got shape {labels.shape}")
        return float(np.mean(self.predict(images, batch_size) == labels)) if labels.size else float("nan")

    # --- checkpoint ---------------------------------------------------------------------
    def meta(self):
        return {"format": FORMAT, "version": VERSION, "dataset": self.dataset,
                "class_names": self.class_names, "num_classes": self.num_classes,
                "arch": {"channels": list(self.channels), "features": self.num_features},
                "test_accuracy": self.test_accuracy, "num_parameters": self.num_parameters(),
                "train": self.info}

    def save(self, path):
        """Write weights and JSON meta to `path` (.npz) atomically; returns the path."""
        arrays = {f"model.{k}": v for k, v in self.state_dict().items()}
        arrays["meta"] = np.asarray(json.dumps(self.meta()))
        fileio.atomic_write(path, lambda f: np.savez(f, **arrays))
        return Path(path)


def _retrain_hint(dataset=None):
    return (f"train a new one: python -m cganraw.classifier train --dataset {dataset or 'NAME'}"
            " (--out PATH to put it elsewhere)")


def load(path):
    """A Classifier from `path` written by Classifier.save, in eval mode. A missing,
    truncated, foreign or non-finite file raises CheckpointError (FileNotFoundError
    when absent) naming the file and what to do."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give the classifier's .npz file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: classifier checkpoint not found; {_retrain_hint()}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError) as e:
        what = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"{path}: not a readable classifier checkpoint ({what}): truncated or "
                              f"corrupt; delete it and {_retrain_hint()}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: not a cganraw classifier (format {found!r})")
    arch = meta.get("arch") or {}
    state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    try:
        clf = Classifier(meta["num_classes"], meta.get("class_names"), meta.get("dataset"),
                         channels=arch.get("channels", DEFAULT_CHANNELS),
                         features=arch.get("features", DEFAULT_FEATURES))
        clf.load_state_dict(state)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the classifier ({e}); "
                              f"{_retrain_hint(meta.get('dataset'))}") from None
    try:
        health.check(state.items(), str(path), bound=health.PARAM_BOUND)
    except health.HealthError as e:
        raise CheckpointError(f"{e}: {_retrain_hint(meta.get('dataset'))}") from None
    clf.test_accuracy = meta.get("test_accuracy")
    clf.info = meta.get("train", {})
    return clf.eval()


def default_path(dataset):
    """$XDG_CACHE_HOME/cganraw/classifiers/<dataset>.npz (else ~/.cache/cganraw/...)."""
    return data.cache_dir() / "classifiers" / f"{data.resolve_name(dataset)}.npz"


# --- training ------------------------------------------------------------------------

def random_shift(x, rng, max_shift=2):
    """Translate each image of x (B, 1, H, W) in [-1, 1] by its own random offset in
    [-max_shift, max_shift]^2, filling with background (-1). One padded copy and one gather."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    p = int(max_shift)
    padded = np.full((b, h + 2 * p, w + 2 * p), -1, dtype=x.dtype)
    padded[:, p:p + h, p:p + w] = x[:, 0]
    oy = rng.integers(0, 2 * p + 1, size=b)
    ox = rng.integers(0, 2 * p + 1, size=b)
    rows = (oy[:, None] + np.arange(h))[:, :, None]             # (B, H, 1)
    cols = (ox[:, None] + np.arange(w))[:, None, :]             # (B, 1, W)
    return padded[np.arange(b)[:, None, None], rows, cols][:, None]


def fit_classifier(images, labels, class_names, dataset=None, test=None, epochs=DEFAULT_EPOCHS,
                   batch_size=DEFAULT_BATCH_SIZE, lr=DEFAULT_LR, seed=0, augment=1, log=None,
                   channels=DEFAULT_CHANNELS, features=DEFAULT_FEATURES):
    """Train a fresh Classifier on uint8 images (N, 28, 28) and int labels (N,).

    Adam (betas 0.9, 0.999) with a cosine learning-rate decay to 2% of `lr`; `augment`
    is the largest random shift in pixels (0: none, at most MAX_AUGMENT). test: (images,
    labels) scored after every epoch. log: where the per-epoch lines go (default: this
    module's logger at INFO). Returns (clf in eval mode, test accuracy or None).
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_HW:
        raise ValueError(f"fit_classifier: expected uint8 images of shape (N, 28, 28), "
                         f"got {images.dtype} shape {images.shape}")
    if epochs < 1:
        raise ValueError(f"fit_classifier: epochs must be >= 1, got {epochs}")
    if not 0 <= augment <= MAX_AUGMENT:
        raise ValueError(f"fit_classifier: augment must be in 0..{MAX_AUGMENT} pixels, got {augment}")
    if len(images) == 0 or len(labels) != len(images):
        raise ValueError(f"fit_classifier: expected N >= 1 images and N labels, got {len(images)} and {len(labels)}")
    log = log or logger.info
    clf = Classifier(len(class_names), class_names, dataset, channels, features, seed=seed)
    ss = np.random.SeedSequence(seed)
    batch_seed, aug_seed = ss.spawn(2)
    batch_size = min(int(batch_size), len(images))
    it = data.BatchIterator(images, labels, batch_size, np.random.default_rng(batch_seed))
    aug_rng = np.random.default_rng(aug_seed)
    opt = Adam(clf.parameters(), lr=lr, betas=(0.9, 0.999))
    xp = backend.array_module(clf.head.weight.data)
    total, step, acc = epochs * len(it), 0, None
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        clf.train()
        loss_sum = correct = seen = 0
        for x, y in it:
            opt.lr = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / total)))
            if augment:
                x = random_shift(x, aug_rng, augment)
            xb, yb = xp.asarray(x), xp.asarray(y)
            opt.zero_grad()
            logits = clf(xb)
            loss, dlogits = softmax_cross_entropy(logits, yb)
            clf.backward(dlogits)
            opt.step()
            step += 1
            loss_sum += loss * len(y)
            correct += int((backend.asnumpy(logits).argmax(1) == y).sum())
            seen += len(y)
        msg = (f"epoch {epoch}/{epochs}: loss {loss_sum / seen:.4f}, train acc {correct / seen:.4f}")
        if test is not None:
            acc = clf.accuracy(*test)
            msg += f", test acc {acc:.4f}"
        log(msg + f" ({time.perf_counter() - t0:.0f} s)")
    clf.drop_caches()
    clf.eval()
    clf.test_accuracy = acc
    clf.info = {"epochs": int(epochs), "batch_size": batch_size, "lr": float(lr), "seed": int(seed),
                "augment": int(augment), "train_images": int(len(images)),
                "seconds": round(time.perf_counter() - t0, 1)}
    return clf, acc


def train_classifier(dataset_name, data_dir=None, epochs=DEFAULT_EPOCHS, batch_size=DEFAULT_BATCH_SIZE,
                     lr=DEFAULT_LR, seed=0, out=None, log=None, augment=1, max_train=None, download=False):
    """Train on the real train split of `dataset_name`, score on its real test split, save to
    `out` when given. max_train: use only the first so many training images (quick runs);
    download: fetch the dataset into the cache when it is nowhere on disk; log: as in
    fit_classifier. Returns (clf, test_accuracy)."""
    if max_train is not None and max_train < 1:
        raise ValueError(f"train_classifier: max_train must be a positive number of images, got {max_train}")
    log = log or logger.info
    train = data.load(dataset_name, "train", data_dir=data_dir, download=download)
    test = data.load(dataset_name, "test", data_dir=data_dir, download=download)
    images, labels = train.images, train.labels
    if max_train is not None:
        images, labels = images[:max_train], labels[:max_train]
    log(f"training the {train.name} classifier on {len(images)} images, testing on {len(test)}")
    clf, acc = fit_classifier(images, labels, train.class_names, dataset=train.name,
                              test=(test.images, test.labels), epochs=epochs, batch_size=batch_size,
                              lr=lr, seed=seed, augment=augment, log=log)
    if out is not None:
        clf.save(out)
        log(f"saved {out}")
    return clf, acc


def load_or_train(dataset, data_dir=None, log=None, **train_kwargs):
    """The classifier cached at default_path(dataset); trained and saved there when absent."""
    path = default_path(dataset)
    if path.is_file():
        return load(path)
    (log or logger.info)(f"no classifier at {path}: training one (once; it is cached)")
    clf, _ = train_classifier(dataset, data_dir=data_dir, out=path, log=log, **train_kwargs)
    return clf


# --- CLI -------------------------------------------------------------------------------

def _parser():
    p = cli.ArgumentParser(prog="python -m cganraw.classifier",
                           description="Train or test the evaluation classifier.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,test}")
    names = sorted(data.DATASETS)
    t = sub.add_parser("train", help="train on a real dataset, print the test accuracy, save",
                       description="Train the evaluation classifier on a real dataset and save it.")
    t.add_argument("--dataset", required=True, choices=names, help="the real dataset to train on")
    t.add_argument("--out", help="checkpoint path, ending in .npz (default: the cache, "
                                 "$XDG_CACHE_HOME/cganraw/classifiers/<dataset>.npz)")
    t.add_argument("--epochs", type=cli.positive_int, default=DEFAULT_EPOCHS, help="passes over the training set")
    t.add_argument("--batch-size", type=cli.positive_int, default=DEFAULT_BATCH_SIZE, help="images per step")
    t.add_argument("--lr", type=cli.positive_float, default=DEFAULT_LR,
                   help="peak Adam learning rate (cosine decay to 2%% of it)")
    t.add_argument("--augment", type=cli.number(int, lambda v: 0 <= v <= MAX_AUGMENT,
                                                 f"an integer in 0..{MAX_AUGMENT}"), default=1,
                   help=f"largest random shift of a training image in pixels, 0..{MAX_AUGMENT} (0: off)")
    t.add_argument("--max-train", type=cli.positive_int, default=None,
                   help="use only the first N training images (default: all)")
    t.add_argument("--data-dir", help="folder holding the dataset's IDX files (default: $CGANRAW_DATA_DIR, "
                                      "then the cache)")
    t.add_argument("--download", action="store_true", help="fetch the dataset into the cache if absent")
    t.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the initial weights, batches and shifts")
    cli.add_common_flags(t)
    e = sub.add_parser("test", help="accuracy of a saved classifier on a real test split",
                       description="Score a saved classifier on a real test split.")
    e.add_argument("--dataset", required=True, choices=names, help="the real dataset to test on")
    e.add_argument("--classifier", help="checkpoint path (default: the cache, see train --out)")
    e.add_argument("--data-dir", help="folder holding the dataset's IDX files (default: $CGANRAW_DATA_DIR, "
                                      "then the cache)")
    cli.add_common_flags(e)
    return p


def _train(args):
    out = Path(args.out) if args.out else default_path(args.dataset)
    # the data first (it may be missing), then the output path, then the long part
    data.load(args.dataset, "test", data_dir=args.data_dir, download=args.download)
    cli.check_output_file(out, "classifier file", suffixes=(".npz",))
    t0 = time.perf_counter()
    clf, acc = train_classifier(args.dataset, args.data_dir, args.epochs, args.batch_size, args.lr,
                                args.seed, out=out, augment=args.augment, max_train=args.max_train,
                                download=args.download)
    print(f"{clf.dataset}: test accuracy {acc:.4f} ({clf.num_parameters()} parameters, "
          f"{(time.perf_counter() - t0) / 60:.1f} min)")


def _test(args):
    path = Path(args.classifier) if args.classifier else default_path(args.dataset)
    clf = load(path)
    test = data.load(args.dataset, "test", data_dir=args.data_dir)
    if clf.num_classes != test.num_classes:
        raise cli.CLIError(f"{path} classifies {clf.num_classes} classes, {test.name} has {test.num_classes}: "
                           f"give the classifier of {test.name}")
    print(f"{path}: {test.name} test accuracy {clf.accuracy(test.images, test.labels):.4f}")


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.data_dir and not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    if getattr(args, "out", None) and not args.out.lower().endswith(".npz"):
        parser.error(f"--out must end in .npz, got {args.out!r}")
    cli.setup_logging(args)
    return cli.run(_train if args.command == "train" else _test, args)


if __name__ == "__main__":
    sys.exit(main())
