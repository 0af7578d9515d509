"""What a study leaves for people: the summary table of its best trials, Optuna's
matplotlib plots as PNG, and the command that trains the best trial again."""
from __future__ import annotations

import logging
import math
import warnings

from cganraw.fileio import atomic_write
from cganraw.tune import study as st

log = logging.getLogger("cganraw.tune")


def _fmt(v, spec):
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _param(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)   # 4 digits: EMA decays 0.9995 vs 0.9999


def state_counts(trials):
    from collections import Counter
    return Counter(t.state.name.lower() for t in trials)


def summary_lines(study, s: st.Settings, top=10):
    """A markdown table of the `top` best complete trials (then a line of counts)."""
    trials = study.get_trials(deepcopy=False)
    order = st.ranked(trials, s)
    searched = [p.name for p in s.space.searched()]
    front = {t.number for t in st.pareto_front(order)} if s.multi_objective else set()
    bar = f">= {100 * s.min_label_accuracy:g}%"
    head = ["rank", "trial", "FID", "label accuracy", bar, "steps", "minutes", *searched]
    if s.multi_objective:
        head.insert(5, "Pareto")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([" ---: "] * len(head)) + "|"]
    for rank, t in enumerate(order[:top], 1):
        a = t.user_attrs
        name = f"{t.number} (defaults)" if a.get("baseline") else str(t.number)
        row = [str(rank), name, _fmt(a.get("fid"), ".3f"), _fmt(100 * a["label_accuracy"], ".2f") + "%",
               "yes" if st.feasible(t, s) else "no", str(a.get("steps", "")), _fmt(a.get("minutes"), ".1f"),
               *(_param(t.params[n]) if n in t.params else "" for n in searched)]
        if s.multi_objective:
            row.insert(5, "yes" if t.number in front else "")
        lines.append("| " + " | ".join(row) + " |")
    counts = state_counts(trials)
    lines.append("")
    lines += baseline_lines(trials, order, s)
    lines.append(f"{len(trials)} trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                 + f"; {sum(st.feasible(t, s) for t in order)} of {len(order)} complete trials meet the "
                 f"label-accuracy bar of {100 * s.min_label_accuracy:g}%")
    return lines


def baseline_lines(trials, order, s: st.Settings):
    """Where the trainer's defaults (the baseline trial, if the study has one) stand."""
    base = [t for t in trials if t.user_attrs.get("baseline")]
    if not base:
        return []
    t, a = base[0], base[0].user_attrs
    if t in order:
        where = (f"rank {order.index(t) + 1} of {len(order)} complete trials: FID {_fmt(a.get('fid'), '.3f')}, "
                 f"label accuracy {_fmt(100 * a['label_accuracy'], '.2f')}%")
        if order.index(t) > 0:
            b = order[0].user_attrs
            where += (f"; the best trial ({order[0].number}) has FID {_fmt(b.get('fid'), '.3f')}, "
                      f"label accuracy {_fmt(100 * b['label_accuracy'], '.2f')}%")
    elif t.state.name == "PRUNED":
        where = f"pruned at step {a.get('pruned_at_step', '?')} (FID {_fmt(a.get('fid'), '.3f')} there)"
    else:
        where = t.state.name.lower()
    return [f"The trainer's defaults (trial {t.number}, the baseline): {where}.", ""]


def best_command(study, s: st.Settings):
    """`python -m cganraw.train ...` of the best trial, or None before any trial completed."""
    best = st.best_trials(study.get_trials(deepcopy=False), s)
    return best[0].user_attrs.get("command") if best else None


# ------------------------------------------------------------------ plots ------------

def _figure(ax):
    import numpy as np
    first = np.ravel(ax)[0] if isinstance(ax, np.ndarray) else ax
    return first.figure


def write_plots(study, s: st.Settings, folder):
    """Optuna's matplotlib plots as PNG in `folder`: optimisation history, parallel
    coordinates, parameter importances, intermediate values (single objective) and the
    Pareto front (multi-objective). A plot that cannot be drawn yet (too few trials) is
    skipped with a note. Returns the paths written."""
    import matplotlib
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm
    matplotlib.use("Agg", force=False)   # files only, no display
    import matplotlib.pyplot as plt
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    fid = {"target": (lambda t: t.values[0]), "target_name": "FID"} if s.multi_objective else {"target_name": "FID"}
    plots = {"history.png": lambda: ovm.plot_optimization_history(study, **fid),
             "parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(study, **fid),
             "param_importances.png": lambda: ovm.plot_param_importances(study, **fid)}
    if s.multi_objective:
        plots["pareto_front.png"] = lambda: ovm.plot_pareto_front(study, target_names=list(st.OBJECTIVES))
    else:
        plots["intermediate_values.png"] = lambda: ovm.plot_intermediate_values(study)
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    written = []
    for name, draw in plots.items():
        if (len(complete) < (2 if name == "param_importances.png" else 1)
                and not (name == "intermediate_values.png" and reported)):
            log.info("no %s yet: it needs more complete trials", name)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = _figure(draw())
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            log.info("no %s: %s", name, " ".join(str(e).split()))
            plt.close("all")
            continue
        fig.set_size_inches(max(fig.get_size_inches()[0], 9), max(fig.get_size_inches()[1], 5))
        fig.tight_layout()
        path = folder / name
        atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        written.append(path)
    return written
