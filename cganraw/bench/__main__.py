"""python -m cganraw.bench: time the benchmark cases and write their report.

    python -m cganraw.bench                        # full run: batches 64 and 128
    python -m cganraw.bench --quick                # batch 64, fewer rounds
    python -m cganraw.bench --filter "gemm and numpy" --out /tmp/b
    python -m cganraw.bench --list --filter conv   # the case ids, nothing timed
    python -m cganraw.bench --from-json bench/results/results.json   # redraw a report
    python -m cganraw.bench --census --backend emu --width 128 --batch-size 128   # the step census
    python -m cganraw.bench --vs-torch --rounds 5   # every model's step, ours vs PyTorch side by side
    python -m cganraw.bench --vs-torch --models dcgan,cgan-mlp   # only those models' rows

The output folder (default bench/results under the current folder) is checked before any
benchmark runs; it receives results.md, results.json and throughput.png (--vs-torch:
vs_torch.json, the medians and ratios printed).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cganraw import cli, fileio, models
from cganraw.bench import cases as C
from cganraw.bench import report, runner

log = logging.getLogger("cganraw.bench")


def _model_list(text):
    """'cgan-conv,dcgan' -> ('cgan-conv', 'dcgan'), each one of models.MODELS."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError("give one or more model names, comma-separated")
    unknown = [n for n in names if n not in models.MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown)}; choose from "
                                         f"{', '.join(models.MODELS)}")
    return names


def build_parser():
    p = argparse.ArgumentParser(prog="python -m cganraw.bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="bench/results", help="output folder")
    p.add_argument("--quick", action="store_true", help="short run: batch 64, fewer rounds, smaller ceilings")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes (batch 2): checks the pipeline, the numbers mean nothing")
    p.add_argument("--filter", default=None, metavar="EXPR",
                   help="keyword expression on the case ids, as pytest -k: 'gemm and not cuda'")
    p.add_argument("--list", action="store_true", help="list the selected case ids and stop")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="threads for BLAS and PyTorch; Numba on as many as training gives it beside them (--vs-torch: "
                        "as many on Numba's TBB layer, else one) (default: $CGANRAW_BENCH_THREADS, "
                        "else the CPUs this process may use)")
    p.add_argument("--vs-torch", action="store_true",
                   help="only the training steps of the models (conv cGAN at (width 128, batch 128) and (64, 64), "
                        "the MLPs and the DCGAN at their training defaults, the DCGAN at (128, 128)), ours against "
                        "PyTorch in this process, interleaved; prints each median and the ratio (needs torch)")
    p.add_argument("--models", type=_model_list, default=None, metavar="M[,M...]",
                   help=f"--vs-torch: only these models' rows, comma-separated, from {', '.join(models.MODELS)} "
                        "(default: all)")
    p.add_argument("--rounds", type=cli.positive_int, default=5, help="--vs-torch: interleaved rounds per shape")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="only redraw the report from a results.json written earlier")
    return cli.add_common_flags(p)


def _read_results(path):
    try:
        data = json.loads(Path(path).read_text())
        return data["records"], data.get("context"), data.get("machine")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise cli.CLIError(f"--from-json {path}: not JSON ({e})") from None
    except (KeyError, TypeError):
        raise cli.CLIError(f"--from-json {path}: not a results.json written by cganraw.bench") from None


def _vs_torch(args) -> int:
    from cganraw.bench import vs_torch
    out = cli.check_output_dir(args.out, "benchmark output folder")
    try:
        data = vs_torch.run(args.rounds, args.threads, vs_torch.select_rows(args.models))
    except ModuleNotFoundError as e:
        if str(e) != vs_torch.TORCH_MISSING:
            raise
        raise cli.CLIError(vs_torch.TORCH_MISSING) from None
    print(vs_torch.format_results(data))
    print(fileio.atomic_write(out / "vs_torch.json", json.dumps(data, indent=1, default=str).encode()))
    return 0


def _main(args) -> int:
    cli.setup_logging(args)
    if args.vs_torch:
        return _vs_torch(args)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    selected = C.select(C.all_cases(mode), args.filter)
    if args.list:
        for case in selected:
            print(case.id)
        return 0
    out = cli.check_output_dir(args.out, "benchmark output folder")
    if args.from_json:
        records, ctx, info = _read_results(args.from_json)
        for path in report.write_report(records, out, ctx=ctx, info=info):
            print(path)
        return 0
    if not selected:
        raise cli.CLIError(f"no benchmark matched --filter {args.filter!r} (--list shows the case ids)")
    log.info("%d case(s), mode %s, report into %s", len(selected), mode, out)
    session = runner.run(selected, mode, args.threads)
    if not session.records:
        raise cli.CLIError(f"no benchmark ran: {len(session.skipped)} skipped, {len(session.failed)} failed")
    for path in report.write_report(session.records, out, ctx=session.ctx):
        print(path)
    if session.failed:
        raise cli.CLIError(f"{len(session.failed)} benchmark(s) failed, first {session.failed[0][0]}: "
                           f"{session.failed[0][1]}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--census" in argv:     # the step census (cganraw.bench.census): counted, not timed
        from cganraw.bench import census
        return census.main([a for a in argv if a != "--census"])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out.strip():
        parser.error("--out: give a folder name")
    if args.models is not None and not args.vs_torch:
        parser.error("--models chooses the rows of --vs-torch: give --vs-torch too")
    try:
        C.matches(args.filter, "")
    except ValueError as e:
        parser.error(str(e))
    return cli.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
