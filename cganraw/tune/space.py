"""The search space of a study: which trainer flags a trial sets, and how Optuna samples them.

A space maps trainer flags (`lr`, `lr-d`, `--batch-size`: dashes or underscores, with or
without the leading `--`) to one of:
  - a range:   {"low": 2e-5, "high": 1e-3, "log": true}   ("step" optional; int or float as the flag is)
  - a choice:  {"choices": [32, 64, 128]}                  (true/false for an on/off switch)
  - a value:   0.5                                         (fixed for every trial, not searched)

The flags are read from `cganraw.train.build_parser()` at run time, so a flag the trainer
lacks is an error, and the stabiliser switches of DEFAULT_SPACE join the default space as
soon as the trainer offers them.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from cganraw.cli import CLIError

# The default space; an entry whose flag the trainer lacks is left out. "switch" means
# every setting of an on/off or multiple-choice flag. "models" limits an entry to the
# models that read it (--width only shapes the conv models, --g-batchnorm only cgan-conv).
# The label-embedding size joins through --label-embed-dim once the trainer has it (today
# it is the constant models.LABEL_EMBED_DIM).
DEFAULT_SPACE = {
    "lr": {"low": 2e-5, "high": 1e-3, "log": True},
    "lr_d": {"low": 2e-5, "high": 1e-3, "log": True},
    "beta1": {"low": 0.0, "high": 0.9},
    "batch_size": {"choices": [32, 64, 128]},
    "width": {"choices": [32, 48, 64, 96], "models": ("cgan-conv", "dcgan")},
    "label_embed_dim": {"choices": [10, 25, 50]},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "mismatch": {"low": 0.0, "high": 2.0},
    "ema_decay": {"choices": [0.0, 0.999, 0.9995, 0.9999]},
    # the R1 penalty's weight (0: off); the dcgan's D has BatchNorm, which R1 refuses
    "r1": {"choices": [0.0, 0.1, 0.3, 1.0], "models": ("cgan-conv", "cgan-mlp", "gan-mlp")},
    # stabilisers: G normalisation, spectral norm, minibatch std, progressive growing, FiLM in G,
    # D's stride-1 stem at 28x28 (channels; 0: none)
    # --g-batchnorm is the old name of --g-norm batch/none: searched only where --g-norm is missing
    "g_batchnorm": {"switch": True, "models": ("cgan-conv",), "unless": "g_norm"},
    "g_norm": {"switch": True, "models": ("cgan-conv",)},
    "d_norm": {"switch": True, "models": ("cgan-conv",)},
    "spectral_norm": {"switch": True, "models": ("cgan-conv",)},
    "minibatch_std": {"switch": True, "models": ("cgan-conv",)},
    "progressive": {"switch": True, "models": ("cgan-conv",)},
    "g_film": {"switch": True, "models": ("cgan-conv",)},
    "d_stem": {"choices": [0, 16], "models": ("cgan-conv",)},
}

# Trainer flags that cganraw.tune sets itself, with the tuner flag that does it.
RESERVED = {
    "dataset": "--dataset", "model": "--model", "seed": "--seed (each trial gets its own)",
    "out": "--study-dir", "resume": "nothing: a trial is one fresh run",
    "max_minutes": "--trial-minutes", "max_steps": "--trial-steps", "epochs": "--trial-minutes",
    "eval_every": "--eval-every-steps", "eval_every_steps": "--eval-every-steps",
    "backend": "--backend", "threads": "--threads", "numba_threads": "--threads (Numba on one thread)",
    "data_dir": "--data-dir", "download": "--download",
    "quiet": "nothing", "debug": "nothing", "help": "nothing", "log_every": "nothing",
    "checkpoint_every": "nothing", "sample_every": "--eval-every-steps",
}
_SPEC_KEYS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One trainer flag of the space: its argparse action and how it is drawn."""
    name: str                 # the argparse dest, also the Optuna parameter name
    action: argparse.Action
    kind: str                 # "float", "int", "choice" or "fixed"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    value: object = None      # kind "fixed"

    @property
    def flag(self):
        return self.action.option_strings[0]

    def describe(self):
        if self.kind == "fixed":
            return f"{self.flag} = {self.value!r}"
        if self.kind == "choice":
            return f"{self.flag} in {{{', '.join(map(repr, self.choices))}}}"
        return (f"{self.flag} in [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
                + (f" step {self.step:g}" if self.step else ""))

    def suggest(self, trial):
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value):
        """Whether Optuna could draw `value` for this parameter."""
        if self.kind == "choice":
            return value in self.choices
        if self.kind in ("int", "float"):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high
        return value == self.value

    def argv(self, value):
        """The trainer's command-line words for `value`."""
        a = self.action
        if isinstance(a, argparse.BooleanOptionalAction):
            return [self.flag if value else "--no-" + self.flag[2:]]
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return [self.flag] if bool(value) != bool(a.default) else []
        return [self.flag, repr(value) if isinstance(value, float) else str(value)]


def trainer_options(parser=None):
    """{dest: action} of the trainer's options (cganraw.train.build_parser() by default)."""
    if parser is None:
        from cganraw import train  # the trainer as it is now, at run time
        parser = train.build_parser()
    return {a.dest: a for a in parser._actions if a.option_strings}


def _is_switch(action):
    return (isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction,
                                argparse._StoreFalseAction)) or bool(action.choices))


def _numeric_type(action):
    """int or float: what the flag's argparse type makes of a probe it accepts; None if neither."""
    convert = action.type or str
    for probe in ("1", "0.5", "0", "2", "100"):
        try:
            v = convert(probe)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            continue
        return int if isinstance(v, int) and not isinstance(v, bool) else float if isinstance(v, float) else None
    return None


def _check_value(name, action, v, where):
    """`v` as the trainer itself would take it, else a one-line CLIError."""
    if _is_switch(action) and not action.choices:
        if not isinstance(v, bool):
            raise CLIError(f"{where}: {action.option_strings[0]} is an on/off switch: use true or false, not {v!r}")
        return v
    if action.choices:
        if v not in action.choices:
            raise CLIError(f"{where}: {action.option_strings[0]} takes one of "
                           f"{', '.join(map(str, action.choices))}, not {v!r}")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise CLIError(f"{where}: {action.option_strings[0]} takes a value, not {v!r}")
    try:
        return (action.type or str)(str(v))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise CLIError(f"{where}: {action.option_strings[0]} {v!r}: {e}") from None


def make_param(name, spec, options, where="--space"):
    """A Param from one entry of a space, checked against the trainer's flags."""
    dest = str(name).lstrip("-").replace("-", "_")
    if dest in RESERVED:
        raise CLIError(f"{where}: {name!r} is set by cganraw.tune itself (use {RESERVED[dest]}), "
                       "not by the search space")
    if dest not in options:
        known = ", ".join(sorted(d.replace("_", "-") for d in options if d not in RESERVED))
        raise CLIError(f"{where}: unknown parameter {name!r}: python -m cganraw.train has no "
                       f"--{dest.replace('_', '-')} (it has: {known})")
    action = options[dest]
    if not isinstance(spec, dict):
        return Param(dest, action, "fixed", value=_check_value(dest, action, spec, f"{where}: {name}"))
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise CLIError(f"{where}: {name}: unknown key {sorted(unknown)[0]!r} (a parameter takes "
                       "low/high/log/step, or choices, or a plain value)")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise CLIError(f"{where}: {name}: choices must be a non-empty list, alone")
        checked = tuple(_check_value(dest, action, c, f"{where}: {name}") for c in choices)
        if len(set(checked)) != len(checked):
            raise CLIError(f"{where}: {name}: choices repeat a value")
        return Param(dest, action, "choice", choices=checked)
    if "low" not in spec or "high" not in spec:
        raise CLIError(f"{where}: {name}: give low and high (a range), or choices, or a plain value")
    num = _numeric_type(action)
    if num is None or _is_switch(action):
        raise CLIError(f"{where}: {name}: {action.option_strings[0]} is not a number: give choices instead")
    low, high = (_check_value(dest, action, spec[k], f"{where}: {name} {k}") for k in ("low", "high"))
    if num is int and not all(isinstance(v, int) for v in (spec["low"], spec["high"])):
        raise CLIError(f"{where}: {name}: {action.option_strings[0]} takes integers: low and high must be integers")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise CLIError(f"{where}: {name}: log must be true or false")
    if not low < high:
        raise CLIError(f"{where}: {name}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise CLIError(f"{where}: {name}: a log range needs low > 0, got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0 \
                or (num is int and not isinstance(step, int)):
            raise CLIError(f"{where}: {name}: step must be a positive {'integer' if num is int else 'number'}")
        if log:
            raise CLIError(f"{where}: {name}: step and log cannot be combined")
    return Param(dest, action, "int" if num is int else "float", low=num(low), high=num(high), log=log,
                 step=step)


class Space:
    """The checked parameters of a study, in a fixed order."""

    def __init__(self, params):
        self.params = list(params)

    def suggest(self, trial):
        """{name: value} for this trial (fixed values included)."""
        return {p.name: p.suggest(trial) for p in self.params}

    def argv(self, values):
        out = []
        for p in self.params:
            out += p.argv(values[p.name])
        return out

    def searched(self):
        return [p for p in self.params if p.kind != "fixed"]

    def trainer_defaults(self, model):
        """{name: value} of the searched flags as `python -m cganraw.train --model MODEL` sets
        them when not given (per-model defaults included): the study's baseline trial."""
        from cganraw import settings
        return {p.name: settings.model_default(model, p.name) if p.name in settings.DEFAULTS else p.action.default
                for p in self.searched()}

    def describe(self):
        return [p.describe() for p in self.params]

    def to_json(self):
        """A canonical description: a study remembers it and refuses a different one."""
        return json.dumps(self.describe())


def default_space(model, options=None):
    """DEFAULT_SPACE less the flags the trainer lacks and the entries for other models."""
    options = trainer_options() if options is None else options
    params = []
    for name, spec in DEFAULT_SPACE.items():
        spec = dict(spec)
        models = spec.pop("models", None)
        superseded_by = spec.pop("unless", None)
        if name not in options or (models and model not in models) or superseded_by in options:
            continue
        action = options[name]
        if spec.pop("switch", False):
            if action.choices:
                spec = {"choices": list(action.choices)}
            elif _is_switch(action):
                spec = {"choices": [True, False]}
            else:
                continue        # a numeric flag: give it a range in a --space file
        params.append(make_param(name, spec, options, "the default space"))
    return Space(params)


def read_space_file(path):
    """The mapping in a JSON or YAML file (by suffix; other names are tried as JSON, then YAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"--space {path}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"--space {path}: is a folder, not a JSON or YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"--space {path}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        doc = _parse_json(path, text)
    elif suffix in (".yaml", ".yml"):
        doc = _parse_yaml(path, text)
    else:
        try:
            doc = json.loads(text)
        except ValueError:
            doc = _parse_yaml(path, text)
    if not isinstance(doc, dict) or not doc:
        raise CLIError(f"--space {path}: expected a mapping of trainer flags to ranges, choices or values, "
                       f"got {type(doc).__name__ if doc else 'nothing'}")
    return doc


def _parse_json(path, text):
    try:
        return json.loads(text)
    except ValueError as e:
        raise CLIError(f"--space {path}: not valid JSON: {e}") from None


def _parse_yaml(path, text):
    try:
        import yaml  # only for YAML files: the [tune] extra
    except ImportError:
        raise CLIError(f"--space {path}: reading YAML needs PyYAML: pip install -e '.[tune]', "
                       "or write the space as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CLIError(f"--space {path}: not valid YAML: {' '.join(str(e).split())}") from None


def load_space(path, model, options=None):
    """The space of --space `path`, or the default space for `model` when path is None."""
    options = trainer_options() if options is None else options
    if path is None:
        return default_space(model, options)
    doc = read_space_file(path)
    return Space(make_param(name, spec, options, f"--space {path}") for name, spec in doc.items())
