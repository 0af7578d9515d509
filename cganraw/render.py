"""Text in generated handwriting: the one renderer behind `cganraw.write` and `cganraw.serve`.

A Renderer holds an ordered list of glyph models (generators with their character sets).
Each character of the text goes to the first model that writes it; a space is a gap and a
newline a new line. Glyphs are drawn through `models.generate` and laid out one of two ways:

    proportional  each glyph cropped to its ink columns, GAP pixels between glyphs, a
                  SPACE-wide gap for a space, MARGIN pixels around the whole image
    monospace     character i of line j fills the 28x28 cell at x = 28 i, y = 28 j
                  (times `scale`), nothing cropped or moved

Noise: style "same" gives each word one noise vector (one hand per word), "varied" one per
glyph; both come from the seed alone, so a request and its seed fix the output bytes.
Ink "dark" is dark strokes on white paper, "light" MNIST's white on black.
"""
from __future__ import annotations

import copy
import logging
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from cganraw import health, images, models

log = logging.getLogger(__name__)

CELL = 28
MAX_CHARS = 256
MAX_LINES = 8
MAX_SEED = 2**32 - 1
STYLES = ("same", "varied")
LAYOUTS = ("proportional", "monospace")
INKS = ("dark", "light")
SCALES = (1, 2, 3, 4)
INK_THRESHOLD = 64      # uint8 level above which a column counts as ink (proportional crop)
GAP = 2                 # pixels between glyphs (proportional), before scaling
SPACE = 10              # width of a space (proportional), before scaling
BLANK = 6               # width of a glyph the model drew without ink
LINE_GAP = 4            # pixels between lines (proportional)
MARGIN = 4              # pixels around the image (proportional)
GEN_CHUNK = 64          # glyphs per generator call: the deadline is checked between calls
SHIPPED = "digits"      # name of the model that ships inside the package
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class RenderError(ValueError):
    """A request the renderer cannot honour (bad option or text)."""


class TextError(RenderError):
    """The text itself is unusable; `characters` lists the characters no model writes."""

    def __init__(self, message, characters=()):
        super().__init__(message)
        self.characters = list(characters)


class RenderTimeout(RenderError):
    """The render passed its deadline."""


class ModelLoadError(ValueError):
    """A model file is missing, unreadable or not a generator: the message names the file."""


# ------------------------------------------------------------------ character sets ---

def char_classes(class_names) -> dict[str, int]:
    """Character -> class index. A class name matches itself; a letter also matches its
    other case when the dataset has no class of that case (EMNIST letters: 'a' and 'A'
    are both class 0; balanced: 'c' is drawn by 'C', while 'a' has its own class)."""
    exact = {name: i for i, name in enumerate(class_names)}
    folded = {}
    for i, name in enumerate(class_names):
        folded.setdefault(name.upper(), i)
    out = {}
    for name in class_names:
        for ch in {name, name.lower(), name.upper()}:
            if len(ch) != 1 or ch in out or ch.isspace():
                continue
            if ch in exact:
                out[ch] = exact[ch]
            elif ch.upper() in folded:
                out[ch] = folded[ch.upper()]
    return dict(sorted(out.items()))


@dataclass(eq=False)
class GlyphModel:
    """A conditional generator and the characters it writes."""
    name: str
    G: object
    class_names: list
    source: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if getattr(self.G, "num_classes", None) is None:
            raise ModelLoadError(f"{self.source}: {self.meta.get('model', 'this model')} is unconditional: "
                                 f"it cannot be asked for a character")
        if len(self.class_names) != self.G.num_classes:
            raise ModelLoadError(f"{self.source}: {len(self.class_names)} class names for "
                                 f"{self.G.num_classes} classes")
        self.chars = char_classes(self.class_names)

    @property
    def characters(self) -> str:
        return "".join(self.chars)

    def describe(self) -> dict:
        """What a client may know: name, characters, dataset, source file name, metrics."""
        m = self.meta
        return {"name": self.name, "characters": self.characters, "dataset": m.get("dataset"),
                "model": m.get("model"), "source": Path(self.source).name if self.source else None,
                "shipped": bool(m.get("shipped")), "ema": m.get("ema"), "step": m.get("step"),
                "training_command": m.get("training_command"), "metrics": m.get("metrics")}


# ------------------------------------------------------------------ loading models ---

def shipped_model_path() -> Path:
    """The digits generator inside the package (cganraw/pretrained/digits.npz)."""
    return Path(str(resources.files("cganraw") / "pretrained" / f"{SHIPPED}.npz"))


def parse_model_spec(spec: str) -> tuple[str, str]:
    """'NAME=PATH' -> (NAME, PATH)."""
    name, sep, path = str(spec).partition("=")
    if not sep or not path:
        raise ValueError(f"--model expects NAME=PATH, got {spec!r}")
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"--model name {name!r}: use 1-32 letters, digits, '_' or '-'")
    return name, path


def load_model(name: str, path) -> GlyphModel:
    """A GlyphModel from an exported generator file, a checkpoint or a run directory.
    Raises ModelLoadError naming the file when it is missing, corrupt or unfit."""
    from cganraw import export  # an entry-point level module

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: model file not found")
    try:
        G, meta = export.load_any(path, ema=True)
        meta = dict(meta, source=str(meta.get("source") or meta.get("path", path)))
        health.check(G.state_dict().items(), str(path), bound=health.PARAM_BOUND)
    except ModelLoadError:
        raise
    except (ValueError, KeyError, OSError, EOFError) as e:
        msg = str(e)
        raise ModelLoadError(msg if str(path) in msg else f"{path}: {msg}") from None
    return GlyphModel(name, G, list(meta.get("class_names") or []), str(meta.get("path", path)), meta)


def load_models(specs=(), shipped=True) -> list[GlyphModel]:
    """The shipped digits model (unless a spec is named 'digits', which replaces it, or
    shipped=False) followed by each 'NAME=PATH' spec in order: the routing order."""
    pairs = [parse_model_spec(s) if isinstance(s, str) else tuple(s) for s in specs]
    names = [n for n, _ in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--model names must differ: {', '.join(dup)} given twice")
    if shipped and SHIPPED not in names:
        pairs.insert(0, (SHIPPED, shipped_model_path()))
    if not pairs:
        raise ValueError("no model to write with: give --model NAME=PATH")
    loaded = [load_model(n, p) for n, p in pairs]
    for m in loaded:
        if m.name == SHIPPED and Path(m.source) == shipped_model_path():
            m.meta["shipped"] = True
    return loaded


# ------------------------------------------------------------------ rendering ---------

def _check_option(name, value, allowed):
    if value not in allowed:
        raise RenderError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _noise(seed, stream, index, dim):
    """N(0, 1) float32 (dim,) from (seed, stream, index) alone."""
    ss = np.random.SeedSequence([int(seed), stream, int(index)])
    return np.random.default_rng(ss).standard_normal(dim, dtype=np.float32)


def encode_png(gray) -> bytes:
    """uint8 (H, W) -> an 8-bit greyscale PNG; the same array always gives the same bytes."""
    a = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = a.shape
    raw = np.zeros((h, w + 1), np.uint8)    # filter byte 0 (None) before each row
    raw[:, 1:] = a

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + chunk(b"IEND", b""))


class Renderer:
    """Routes characters to models, checks text, draws and lays out glyphs.

    Not safe to share between threads while rendering (a generator runs in place):
    give each thread its own `clone()`."""

    def __init__(self, glyph_models):
        self.models = list(glyph_models)
        if not self.models:
            raise ValueError("a Renderer needs at least one model")
        self.route = {}
        for i, m in enumerate(self.models):
            for ch, cls in m.chars.items():
                self.route.setdefault(ch, (i, cls))
        self.charset = "".join(sorted(self.route))
        # The whole text must match this before any model runs.
        self.pattern = re.compile("[" + re.escape(self.charset) + " \n]*")

    def clone(self) -> Renderer:
        """The same models with their own copies of the weights."""
        return Renderer([GlyphModel(m.name, copy.deepcopy(m.G), m.class_names, m.source, m.meta)
                         for m in self.models])

    def unwritable(self, text) -> list[str]:
        """Characters of `text` that no model writes, each once, in order of appearance."""
        return list(dict.fromkeys(ch for ch in text if ch not in self.route and ch not in " \n"))

    def check(self, text) -> None:
        """Raise TextError unless `text` is writable: non-empty, at most MAX_CHARS characters
        and MAX_LINES lines, every character in the loaded character sets."""
        if not isinstance(text, str):
            raise TextError(f"text must be a string, got {type(text).__name__}")
        if not text.strip(" \n"):
            raise TextError("text is empty: give at least one character to write")
        if len(text) > MAX_CHARS:
            raise TextError(f"text has {len(text)} characters, more than {MAX_CHARS}")
        lines = text.count("\n") + 1
        if lines > MAX_LINES:
            raise TextError(f"text has {lines} lines, more than {MAX_LINES}")
        if not self.pattern.fullmatch(text):
            bad = self.unwritable(text)
            shown = " ".join(repr(c) for c in bad)
            raise TextError(f"no loaded model writes {shown} (characters: {self.charset}, space, newline)", bad)

    def glyphs(self, text, seed=0, style="same", deadline=None):
        """uint8 (n, 28, 28) white-on-black glyphs of the text's non-space characters, in
        reading order. Each word shares one noise vector (style 'same') or each glyph has
        its own ('varied'); identical (model, class, noise) glyphs are drawn once."""
        _check_option("style", style, STYLES)
        if not (isinstance(seed, (int, np.integer)) and 0 <= seed <= MAX_SEED):
            raise RenderError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
        keys, jobs = [], {}          # key -> (model index, class, noise key)
        word, in_word, g = -1, False, 0
        for ch in text:
            if ch in " \n":
                in_word = False
                continue
            if not in_word:
                word, in_word = word + 1, True
            mi, cls = self.route[ch]
            key = (mi, cls, (0, word) if style == "same" else (1, g))
            keys.append(key)
            jobs.setdefault(key, None)
            g += 1
        drawn = {}
        for mi, m in enumerate(self.models):
            mine = [k for k in jobs if k[0] == mi]
            for lo in range(0, len(mine), GEN_CHUNK):
                if deadline is not None and time.monotonic() > deadline:
                    raise RenderTimeout("the render ran past its time limit")
                part = mine[lo:lo + GEN_CHUNK]
                labels = np.array([k[1] for k in part], np.int64)
                z = np.stack([_noise(seed, k[2][0], k[2][1], m.G.latent_dim) for k in part])
                out = images.to_uint8(models.generate(m.G, labels, z=z, batch=GEN_CHUNK))
                drawn.update(zip(part, out))
        return np.stack([drawn[k] for k in keys]) if keys else np.zeros((0, CELL, CELL), np.uint8)

    def render(self, text, seed=0, style="same", layout="proportional", scale=1, ink="dark",
               deadline=None) -> np.ndarray:
        """The text as uint8 (H, W), after check(); deadline: time.monotonic() limit."""
        _check_option("layout", layout, LAYOUTS)
        _check_option("ink", ink, INKS)
        if isinstance(scale, bool) or scale not in SCALES:
            raise RenderError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
        self.check(text)
        glyphs = iter(self.glyphs(text, seed, style, deadline))
        lines = text.split("\n")
        canvas = monospace(lines, glyphs) if layout == "monospace" else proportional(lines, glyphs)
        if ink == "dark":
            canvas = 255 - canvas
        if scale > 1:
            canvas = np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1)
        return np.ascontiguousarray(canvas)

    def render_png(self, text, **options) -> bytes:
        return encode_png(self.render(text, **options))


def monospace(lines, glyphs) -> np.ndarray:
    """Character i of line j in the cell [28j, 28j+28) x [28i, 28i+28); white on black."""
    width = max(len(line) for line in lines)
    canvas = np.zeros((CELL * len(lines), CELL * max(width, 1)), np.uint8)
    for j, line in enumerate(lines):
        for i, ch in enumerate(line):
            if ch != " ":
                canvas[CELL * j:CELL * (j + 1), CELL * i:CELL * (i + 1)] = next(glyphs)
    return canvas


def ink_columns(glyph) -> np.ndarray:
    """The glyph (28, 28) cut to the columns from its first to its last with ink."""
    cols = np.flatnonzero(glyph.max(axis=0) > INK_THRESHOLD)
    if cols.size == 0:
        return np.zeros((CELL, BLANK), np.uint8)
    return glyph[:, cols[0]:cols[-1] + 1]


def proportional(lines, glyphs) -> np.ndarray:
    """Glyphs cut to their ink, GAP apart, a space SPACE wide, lines LINE_GAP apart, all
    inside a MARGIN; white on black."""
    rows = []
    for line in lines:
        parts = []
        for ch in line:
            piece = np.zeros((CELL, SPACE), np.uint8) if ch == " " else ink_columns(next(glyphs))
            if parts:
                parts.append(np.zeros((CELL, GAP), np.uint8))
            parts.append(piece)
        rows.append(np.concatenate(parts, axis=1) if parts else np.zeros((CELL, 0), np.uint8))
    width = max(r.shape[1] for r in rows)
    height = CELL * len(rows) + LINE_GAP * (len(rows) - 1)
    canvas = np.zeros((height + 2 * MARGIN, width + 2 * MARGIN), np.uint8)
    for j, r in enumerate(rows):
        y = MARGIN + j * (CELL + LINE_GAP)
        canvas[y:y + CELL, MARGIN:MARGIN + r.shape[1]] = r
    return canvas
