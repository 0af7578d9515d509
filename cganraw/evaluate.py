"""Judge a trained generator with the evaluation classifier (cganraw.classifier).

    python -m cganraw.evaluate --checkpoint RUN/checkpoints/last.npz [--classifier PATH]
                               [--n-per-class N] [--seed S] [--out DIR] [--data-dir DIR]
    python -m cganraw.evaluate --real --dataset mnist      # the same metrics of real images

Generates N images per class from seeded z ~ N(0, 1), scores them with the classifier and
reports (cganraw.metrics.summarize):
    inception_score  exp(E KL(p(y|x) || p(y)))                 1..K, K is best
    fid              Frechet distance of classifier features, generated vs the real test set
    bcis, wcis       between-/within-class conditional IS (Benny et al.): K and 1 are best
    label_accuracy   classifier argmax == conditioning label, overall and per class
    confusion        rows: conditioning label, columns: the classifier's argmax
    cas              Classification Accuracy Score (Ravuri & Vinyals 2019): a fresh classifier
                     trained only on generated images, tested on the real test set
    style_spread     per class, the interquartile range of ink, slant and width over the
                     generated images / the same over the real test set's (metrics.style_spread):
                     1 is real variety; left out when no class has two images
    speckle          the fraction of images with a detached speck of ink (metrics.speckle)
An unconditional model gets IS and FID only. Writes metrics.json, confusion.png and
per_class_accuracy.png into --out (default: the run directory, the parent of checkpoints/).

The trainer calls `evaluate_generator(G, class_names, classifier, ...)` every few epochs:
the real test set and its classifier features are loaded and embedded once, then cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from cganraw import backend, cli, export, fileio, metrics, models

__all__ = ["generate", "score_images", "class_accuracy_score", "evaluate_generator", "real_reference",
           "load_real_test", "cached_features", "clear_caches", "format_table", "write_outputs", "main"]

logger = logging.getLogger("cganraw.evaluate")   # not __name__: that is __main__ under -m

DEFAULT_N_PER_CLASS = 1000
DEFAULT_CAS_EPOCHS = 5
CAS_BATCH, CAS_LR = 64, 5e-3     # more steps than the real-data recipe: generated sets are small
GEN_BATCH = 500
IS_SPLITS = 10
OUTPUT_FILES = ("metrics.json", "confusion.png", "per_class_accuracy.png")
# Real test sets (and their features) kept in memory: MNIST's is 7.8 MB, EMNIST byclass's 91 MB.
CACHE_SIZE = 2


def generate(G, n, labels=None, seed=0, batch_size=GEN_BATCH):
    """n images from G (models.generate): float32 (n, 1, 28, 28) on the host."""
    return models.generate(G, labels, n=n, seed=seed, batch=batch_size)


# ----------------------------------------------------------------------- the caches ---

class _LRU:
    """The `size` most recently used values, by key."""

    def __init__(self, size):
        self.size, self.items = size, OrderedDict()

    def get(self, key, make):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


_test_sets = _LRU(CACHE_SIZE)     # (dataset, where its files are looked for) -> (images, labels)
_features = _LRU(CACHE_SIZE)      # (classifier weights digest, images digest) -> features


def clear_caches():
    """Forget the cached real test sets and features."""
    _test_sets.items.clear()
    _features.items.clear()


def _frozen(a):
    a = np.asarray(a)
    a.flags.writeable = False     # shared by every caller of the cache: nobody may change it
    return a


def load_real_test(dataset, data_dir=None):
    """(images uint8 (N, 28, 28), labels (N,)) of `dataset`'s real test split, read-only,
    loaded once per dataset and data location (cganraw.data.load looks in data_dir, then
    $CGANRAW_DATA_DIR, then the cache folder under $XDG_CACHE_HOME)."""
    from cganraw import data
    name = data.resolve_name(dataset)
    where = (str(Path(data_dir).resolve()) if data_dir else None,
             os.environ.get("CGANRAW_DATA_DIR"), os.environ.get("XDG_CACHE_HOME"))

    def read():
        logger.debug("loading the real %s test set", name)
        test = data.load(name, "test", data_dir=data_dir)
        return _frozen(test.images), _frozen(test.labels)
    return _test_sets.get((name, *where), read)


def _digest(arrays):
    h = hashlib.blake2b(digest_size=16)
    for name, a in arrays:
        a = np.ascontiguousarray(backend.asnumpy(a))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def cached_features(classifier, images):
    """classifier.features(images) for a real image set, cached by content: the classifier's
    weights and the images themselves (hashing the MNIST test set takes milliseconds, its
    embedding seconds), so a trainer evaluating every few epochs embeds the set once."""
    key = (_digest(classifier.state_dict().items()), _digest([("images", images)]))
    return _features.get(key, lambda: _frozen(classifier.features(images)))


def _as_pair(real_test):
    """A cganraw.data.Dataset or (images, labels) -> (images, labels)."""
    if isinstance(real_test, tuple):
        return real_test
    return real_test.images, real_test.labels


# ------------------------------------------------------------------------ scoring ---

def score_images(images, labels, classifier, class_names=None, real_test=None, real_features=None,
                 cas=True, cas_epochs=DEFAULT_CAS_EPOCHS, seed=0, data_dir=None, log=None):
    """All metrics of a set of images the classifier takes (uint8 (N, 28, 28) or float
    (N, 1, 28, 28) in [-1, 1]) generated for `labels` (N,) int, or None (unconditional: IS and
    FID only). real_test: a cganraw.data.Dataset or (images, labels) of the REAL test split
    (default: the classifier's dataset, loaded once and cached); real_features: its classifier
    features, if already computed (default: cached_features). log: where progress lines go (default: this module's
    logger). Returns a JSON-friendly dict: metrics.summarize's keys plus class_names,
    fid_real_samples, cas, classifier and seconds."""
    log = log or logger.info
    t0 = time.perf_counter()
    n = images.shape[0]
    if labels is not None:
        labels = np.asarray(backend.asnumpy(labels)).astype(np.int64)
        if labels.shape != (n,):
            raise ValueError(f"score_images: expected labels of shape ({n},), got shape {labels.shape}")
    k = classifier.num_classes
    names = list(class_names) if class_names is not None else list(classifier.class_names)
    if len(names) != k:
        raise ValueError(f"score_images: {len(names)} class names for a classifier of {k} classes")
    if real_test is None and classifier.dataset is not None:
        real_test = load_real_test(classifier.dataset, data_dir)
    test = _as_pair(real_test) if real_test is not None else None

    feats = None
    if test is not None and n >= 2:
        real = real_features if real_features is not None else cached_features(classifier, test[0])
        feats = (classifier.features(images), real)
    else:
        log("no real test set: FID and CAS skipped")
    summary = metrics.summarize(classifier.probs(images), labels, *(feats or (None, None)),
                                splits=min(IS_SPLITS, n), split_seed=seed)
    res = {"num_samples": summary.pop("num_samples"), "num_classes": summary.pop("num_classes"),
           "class_names": names, **summary}
    if feats is not None:
        res["fid_real_samples"] = int(feats[1].shape[0])
    res["speckle"] = metrics.speckle(images)
    if labels is not None and test is not None and np.bincount(labels, minlength=k).max() >= 2:
        res["style_spread"] = metrics.style_spread(images, labels, test[0], test[1], k)
    if labels is not None:
        res["cas"] = None
        if cas and test is not None:
            res["cas"] = class_accuracy_score(images, labels, names, test, classifier.dataset,
                                              epochs=cas_epochs, seed=seed, log=log)
    res["classifier"] = {"dataset": classifier.dataset, "test_accuracy": classifier.test_accuracy}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def class_accuracy_score(images, labels, class_names, real_test, dataset=None,
                         epochs=DEFAULT_CAS_EPOCHS, seed=0, log=None):
    """CAS: accuracy on the real test set of a fresh Classifier trained only on `images`."""
    from cganraw import classifier as C
    from cganraw.images import to_uint8
    train_u8 = images if images.dtype == np.uint8 else to_uint8(images)
    (log or logger.info)(f"CAS: training a fresh classifier on these {len(train_u8)} images ({epochs} epochs)")
    test = _as_pair(real_test)
    _, acc = C.fit_classifier(train_u8, labels, class_names, dataset=dataset, test=(test[0], test[1]),
                              epochs=epochs, batch_size=CAS_BATCH, lr=CAS_LR, seed=seed, log=logger.debug)
    return float(acc)


def evaluate_generator(G, class_names, classifier, n_per_class=DEFAULT_N_PER_CLASS, seed=0,
                       real_test=None, cas=True, log=None, cas_epochs=DEFAULT_CAS_EPOCHS,
                       data_dir=None, batch_size=GEN_BATCH):
    """Generate n_per_class images per class (z from `seed`) and score them: see score_images.
    class_names: the generator's classes, or None for an unconditional G (which gets
    n_per_class * classifier.num_classes images and only IS and FID)."""
    conditional = getattr(G, "num_classes", None) is not None
    if conditional:
        if class_names is None:
            raise ValueError("evaluate_generator: a conditional generator needs its class_names")
        k = len(class_names)
        if k != G.num_classes or k != classifier.num_classes:
            raise ValueError(f"evaluate_generator: the generator has {G.num_classes} classes, class_names "
                             f"{k}, the classifier {classifier.num_classes} ({classifier.dataset})")
        labels = np.repeat(np.arange(k, dtype=np.int64), n_per_class)
    else:
        labels = None
    n = n_per_class * classifier.num_classes
    t0 = time.perf_counter()
    (log or logger.info)(f"generating {n} images ({n_per_class} per class, seed {seed})")
    images = generate(G, n, labels, seed, batch_size)
    res = score_images(images, labels, classifier, class_names if conditional else None, real_test=real_test,
                       cas=cas, cas_epochs=cas_epochs, seed=seed, data_dir=data_dir, log=log)
    res.update({"n_per_class": int(n_per_class), "seed": int(seed), "conditional": conditional,
                "seconds": round(time.perf_counter() - t0, 2)})
    return res


def real_reference(train, n_per_class, seed=0):
    """n_per_class real images of each class, drawn without replacement from `train` (a
    cganraw.data.Dataset): (images uint8 (K*n, 28, 28), labels (K*n,)), class-major."""
    rng = np.random.default_rng(seed)
    idx = []
    for k in range(train.num_classes):
        members = np.flatnonzero(train.labels == k)
        if len(members) < n_per_class:
            raise ValueError(f"{train.name} {train.split}: class {train.class_names[k]!r} has {len(members)} "
                             f"images, fewer than --n-per-class {n_per_class}")
        idx.append(rng.choice(members, n_per_class, replace=False))
    idx = np.concatenate(idx)
    return train.images[idx], train.labels[idx].astype(np.int64)


# ------------------------------------------------------------------------ reports ---

def _fmt(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def format_table(res):
    """The metrics as aligned text lines."""
    rows = [("inception score", f"{_fmt(res['inception_score'], '.3f')} +- {_fmt(res['inception_score_std'], '.3f')}"
                                f"  (best {res['num_classes']})"),
            ("FID (classifier features)", _fmt(res.get("fid"), ".3f"))]
    if res.get("speckle") is not None:
        rows.append(("images with a speck", _fmt(res["speckle"])))
    if "bcis" in res:
        rows += [("BCIS", f"{res['bcis']:.3f}  (best {res['num_classes']})"),
                 ("WCIS", f"{res['wcis']:.3f}  (best 1)"),
                 ("label accuracy", _fmt(res["label_accuracy"])),
                 ("CAS (train on generated)", _fmt(res.get("cas")))]
    if res.get("style_spread"):
        spread = res["style_spread"]
        rows.append(("style spread (real = 1)", "  ".join(f"{name} {_fmt(spread[name], '.2f')}"
                                                         for name in metrics.STYLE_FEATURES)))
    acc = res.get("classifier", {}).get("test_accuracy")
    rows.append(("classifier real test acc", _fmt(acc)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {val}" for name, val in rows]
    if "per_class_accuracy" in res:
        cells = [f"{c}:{_fmt(a, '.3f')}" for c, a in zip(res["class_names"], res["per_class_accuracy"])]
        lines.append("per-class accuracy:")
        lines += ["  " + "  ".join(cells[i:i + 8]) for i in range(0, len(cells), 8)]
    return lines


def write_outputs(res, out_dir):
    """metrics.json, and for a conditional model confusion.png and per_class_accuracy.png,
    each written atomically. Returns the paths written."""
    from cganraw import plots
    out_dir = Path(out_dir)
    # one key per line, each value on one line (the confusion matrix as a row list)
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in res.items()) + "\n}\n"
    written = [fileio.atomic_write(out_dir / "metrics.json", text.encode())]
    if "confusion_matrix" in res:
        where = [res.get("dataset"), f"step {res['step']}" if res.get("step") is not None else res.get("source")]
        title = f" ({', '.join(w for w in where if w)})" if any(where) else ""
        written.append(Path(plots.plot_confusion_matrix(np.asarray(res["confusion_matrix"]), res["class_names"],
                                                        out_dir / "confusion.png", title="Confusion matrix" + title)))
        acc = np.array([np.nan if a is None else a for a in res["per_class_accuracy"]])
        written.append(Path(plots.plot_per_class_accuracy(acc, res["class_names"], out_dir / "per_class_accuracy.png",
                                                          title="Per-class label accuracy" + title)))
    return written


# ---------------------------------------------------------------------------- CLI ---

def build_parser():
    p = cli.ArgumentParser(prog="python -m cganraw.evaluate",
                           description="Score a generator checkpoint with the evaluation classifier.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="RUN/checkpoints/last.npz, a run directory or an exported generator "
                                           "file (its scores go to runs/NAME-eval unless --out)")
    what.add_argument("--real", action="store_true",
                      help="score N real training images per class of --dataset instead: the reference "
                           "row that generated images are judged against")
    p.add_argument("--classifier", help="classifier checkpoint (default: the cached one of the dataset, "
                                        "trained on first use)")
    p.add_argument("--n-per-class", type=cli.positive_int, default=DEFAULT_N_PER_CLASS,
                   help="images drawn (or real images picked) per class")
    p.add_argument("--seed", type=cli.nonneg_int, default=0, help="seed of the noise, the IS splits and CAS")
    p.add_argument("--out", help="output folder (default: the run directory; runs/<dataset>-real with --real)")
    p.add_argument("--data-dir", help="folder holding the dataset's IDX files (default: $CGANRAW_DATA_DIR, "
                                      "then the cache)")
    p.add_argument("--dataset", help="the dataset (default: the checkpoint's; required with --real)")
    p.add_argument("--no-ema", action="store_true",
                   help="score the last raw weights of G instead of their moving average (with --checkpoint; "
                        "give another --out to keep the moving average's metrics)")
    p.add_argument("--no-cas", action="store_true", help="skip the Classification Accuracy Score")
    p.add_argument("--cas-epochs", type=cli.positive_int, default=DEFAULT_CAS_EPOCHS,
                   help="epochs of the CAS classifier's training")
    cli.add_common_flags(p)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.real and not args.dataset:
        parser.error("--real needs --dataset (the real images of which dataset?)")
    if args.real and args.no_ema:
        parser.error("--no-ema scores a checkpoint's raw weights: it needs --checkpoint, not --real")
    if args.data_dir and not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a folder")
    if args.dataset:
        from cganraw import data
        try:
            args.dataset = data.resolve_name(args.dataset)
        except ValueError as e:
            parser.error(f"--dataset: {e}")
    cli.setup_logging(args)
    return cli.run(_evaluate, args)


def _evaluate(args):
    """Read and check every input, check the outputs, and only then do the long work."""
    score, default_out, headline = (_prepare_real if args.real else _prepare_checkpoint)(args)
    out = cli.check_output_dir(args.out or default_out)
    for name in OUTPUT_FILES:
        cli.check_output_file(out / name)
    res = score()
    print(headline.format(**res))
    for line in format_table(res):
        print("  " + line)
    for path in write_outputs(res, out):
        logger.info("wrote %s", path)
    return 0


def _classifier(args, dataset, num_classes):
    """(classifier, its path) of --classifier, else of the cache of `dataset`: a function,
    since the cached one may still have to be trained (long work, after the output checks)."""
    from cganraw import classifier as C
    path = Path(args.classifier) if args.classifier else C.default_path(dataset)
    if args.classifier or path.is_file():
        clf = C.load(path)
        if clf.num_classes != num_classes:
            raise cli.CLIError(f"{path} classifies {clf.num_classes} classes, {dataset} has {num_classes}: "
                               f"give the classifier of {dataset} (--classifier)")
        if clf.dataset and clf.dataset != dataset:
            logger.warning("warning: the classifier was trained on %s, the images are of %s", clf.dataset, dataset)
        return lambda: clf, str(path)
    return lambda: C.load_or_train(dataset, data_dir=args.data_dir), str(path)


def _prepare_checkpoint(args):
    """--checkpoint: (score() -> results, default output folder, headline)."""
    from cganraw import data
    G, meta = export.load_any(args.checkpoint, ema=not args.no_ema)     # refuses a diverged checkpoint
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise cli.CLIError(f"{meta['path']}: the checkpoint names no dataset; pass --dataset")
    dataset = data.resolve_name(dataset)
    test_images, test_labels = load_real_test(dataset, args.data_dir)
    num_classes = meta.get("num_classes") or data.DATASETS[dataset].num_classes
    get_clf, clf_path = _classifier(args, dataset, num_classes)
    class_names = meta.get("class_names") if meta.get("num_classes") else None
    if meta.get("num_classes") and not class_names:
        class_names = data.load(dataset, "test", data_dir=args.data_dir).class_names

    def score():
        clf = get_clf()
        res = evaluate_generator(G, class_names, clf, args.n_per_class, args.seed,
                                 real_test=(test_images, test_labels), cas=not args.no_cas,
                                 cas_epochs=args.cas_epochs, data_dir=args.data_dir)
        res.update({"checkpoint": meta["path"], "dataset": dataset, "model": meta.get("model") or
                    meta.get("config", {}).get("model"), "step": meta.get("step"), "epoch": meta.get("epoch"),
                    "weights": "moving average" if meta["ema"] else "raw",
                    "classifier": dict(res["classifier"], path=clf_path)})
        return res
    return score, _out_dir(meta), "{model} on {dataset}, step {step}, {weights} weights, {num_samples} samples:"


def _prepare_real(args):
    """--real: the metrics of real training images, the reference row."""
    from cganraw import data
    train = data.load(args.dataset, "train", data_dir=args.data_dir)
    test = load_real_test(args.dataset, args.data_dir)
    images, labels = real_reference(train, args.n_per_class, args.seed)
    get_clf, clf_path = _classifier(args, train.name, train.num_classes)

    def score():
        res = score_images(images, labels, get_clf(), train.class_names, real_test=test, cas=not args.no_cas,
                           cas_epochs=args.cas_epochs, seed=args.seed, data_dir=args.data_dir)
        res.update({"source": f"real {train.name} training images", "dataset": train.name, "model": "real data",
                    "n_per_class": int(args.n_per_class), "seed": int(args.seed),
                    "classifier": dict(res["classifier"], path=clf_path)})
        return res
    return score, Path(f"runs/{train.name}-real"), "{source}, {num_samples} samples:"


def _out_dir(meta):
    """The default output folder: the run directory of a checkpoint; runs/<name>-eval for an
    exported generator file (which may sit inside the installed package)."""
    path = Path(meta["path"])
    if meta.get("format") == export.FORMAT:
        return Path("runs") / f"{path.stem}-eval"
    p = path.resolve().parent
    return p.parent if p.name == "checkpoints" else p


if __name__ == "__main__":
    sys.exit(main())
