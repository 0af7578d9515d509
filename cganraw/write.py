"""Write text in generated handwriting to a PNG, with no server.

    python -m cganraw.write "Call 0800 2026" --out call.png
    python -m cganraw.write "HELLO 42" --model letters=runs/letters --layout monospace --scale 2 --out hi.png

Digits come from the generator shipped in the package; `--model NAME=PATH` (repeatable)
adds a model (an exported file, a checkpoint or a run directory) and `--model digits=PATH`
replaces the shipped one. Each character goes to the first model that writes it.
"""
from __future__ import annotations

import logging
import sys

from cganraw import backend, cli, fileio, render

log = logging.getLogger("cganraw.write")   # not __name__: that is __main__ under python -m


def build_parser():
    p = cli.ArgumentParser(prog="python -m cganraw.write", description=__doc__.split("\n")[0])
    p.add_argument("text", help=f"the text: up to {render.MAX_CHARS} characters and {render.MAX_LINES} lines "
                                "('\\n' in the text, or a real newline, starts a new line)")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--seed", type=cli.number(int, lambda v: 0 <= v <= render.MAX_SEED,
                                             f"an integer in 0..{render.MAX_SEED}"), default=0,
                   help="fixes the hand: the same text, options and seed give the same bytes")
    p.add_argument("--style", choices=render.STYLES, default="same",
                   help="same: one hand per word; varied: a new hand per glyph")
    p.add_argument("--layout", choices=render.LAYOUTS, default="proportional",
                   help="proportional: glyphs cut to their ink; monospace: one 28x28 cell per character")
    p.add_argument("--scale", type=int, choices=render.SCALES, default=1, help="pixels per model pixel")
    p.add_argument("--ink", choices=render.INKS, default="dark",
                   help="dark: dark ink on white paper; light: white on black, as in MNIST")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="add a model (exported .npz, checkpoint or run directory); repeatable")
    p.add_argument("--backend", choices=backend.BACKENDS, default=None)
    return cli.add_common_flags(p)


def _main(args):
    cli.setup_logging(args)
    out = cli.check_output_file(args.out, "--out", suffixes=(".png",))
    text = args.text.replace("\\n", "\n")
    if args.backend:
        backend.use(args.backend)
    renderer = render.Renderer(render.load_models(args.model))
    png = renderer.render_png(text, seed=args.seed, style=args.style, layout=args.layout, scale=args.scale,
                              ink=args.ink)
    fileio.atomic_write(out, png)
    log.info("wrote %s (%d characters, seed %d, models %s)", out, len(text), args.seed,
             ", ".join(m.name for m in renderer.models))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.run(_main, args, expected=(render.RenderError, render.ModelLoadError))


if __name__ == "__main__":
    sys.exit(main())
