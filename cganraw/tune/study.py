"""A study's settings, its storage and its Optuna parts: sampler, pruner, the trial count,
which trials are best, and what each trial keeps on disk."""
from __future__ import annotations

import logging
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from cganraw.cli import CLIError, check_output_dir, describe_error
from cganraw.tune.space import Space

log = logging.getLogger("cganraw.tune")

# A trial whose worker died is run again this many times at most (heartbeat + retry callback).
MAX_RETRIES = 2
OBJECTIVES = ("FID", "1 - label accuracy")


@dataclass
class Settings:
    """What every worker of a study needs, from the command line."""
    study_name: str
    storage_url: str
    study_dir: Path
    dataset: str
    model: str
    space: Space
    trials: int = 40
    trial_minutes: float = 5.0
    trial_steps: int | None = None
    eval_every_steps: int = 100
    seed: int = 0
    multi_objective: bool = False
    min_label_accuracy: float = 0.98
    sampler: str = "tpe"
    pruner: str = "hyperband"
    heartbeat: int = 60
    threads: int | None = None
    data_dir: str | None = None
    download: bool = True
    backend: str | None = None

    def fingerprint(self):
        """What every command working on one study must agree on (kept in the study)."""
        return {"dataset": self.dataset, "model": self.model, "multi_objective": self.multi_objective,
                "space": self.space.to_json(), "trial_minutes": self.trial_minutes,
                "trial_steps": self.trial_steps, "eval_every_steps": self.eval_every_steps,
                "min_label_accuracy": self.min_label_accuracy}


def _optuna():
    import optuna  # the [tune] extra
    optuna.logging.set_verbosity(optuna.logging.ERROR)   # we log each trial ourselves, in one line
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    return optuna


def require_optuna():
    try:
        return _optuna()
    except ImportError:
        raise CLIError("cganraw.tune needs Optuna: pip install -e '.[tune]'") from None


# ------------------------------------------------------------------ storage --------

def shown_url(url):
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:   # any malformed URL: shown as given
        return url


def _db_reason(e):
    """The database's own words for a failure, in one line (not SQLAlchemy's wrapper)."""
    orig = getattr(e, "orig", None)
    return describe_error(orig if orig is not None else e)


def open_storage(url, heartbeat):
    """Optuna's RDB storage at `url`, with the heartbeat that fails a dead worker's trial and
    the callback that retries it. Any failure to open it is one CLIError line."""
    optuna = require_optuna()
    from sqlalchemy.engine import make_url  # optuna's own dependency
    shown = shown_url(url)
    try:
        parsed = make_url(url)
    except Exception:   # make_url raises several classes
        raise CLIError(f"--storage {url!r} is not a database URL (sqlite:///FILE.db, "
                       "postgresql://USER:PASSWORD@HOST/DB, mysql+pymysql://USER:PASSWORD@HOST/DB)") from None
    kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            check_output_dir(Path(parsed.database).parent, "folder of the --storage database")
        kwargs = {"connect_args": {"timeout": 300}}   # workers queue for SQLite's one writer
    # RetryHeartbeatStaleTrialCallback: Optuna >= 4.9's name for RetryFailedTrialCallback
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                          grace_period=2 * heartbeat, heartbeat_stale_trial_callback=retry)
    except ImportError:
        raise CLIError(f"cannot open the study storage {shown}: no database driver for "
                       f"{parsed.get_backend_name()} is installed (PostgreSQL: pip install psycopg2-binary; "
                       "MySQL: pip install pymysql)") from None
    except Exception as e:   # SQLAlchemy's and the drivers' many error classes
        raise CLIError(f"cannot open the study storage {shown}: {_db_reason(e)}") from None


def open_study(s: Settings, create=False):
    """The study named s.study_name in s.storage_url (created when `create`), checked to
    have been made with the same settings."""
    optuna = require_optuna()
    storage = open_storage(s.storage_url, s.heartbeat)
    directions = ["minimize", "minimize"] if s.multi_objective else ["minimize"]
    try:
        if create:
            study = optuna.create_study(study_name=s.study_name, storage=storage, directions=directions,
                                        load_if_exists=True)
        else:
            study = optuna.load_study(study_name=s.study_name, storage=storage)
        saved = study.user_attrs
    except KeyError:
        raise CLIError(f"no study {s.study_name!r} in {shown_url(s.storage_url)}") from None
    except Exception as e:
        raise CLIError(f"cannot open study {s.study_name!r} in {shown_url(s.storage_url)}: {_db_reason(e)}") from None
    mine = s.fingerprint()
    if not saved.get("settings"):
        if create:
            study.set_user_attr("settings", mine)
        return study
    theirs = saved["settings"]
    differ = [f"{k.replace('_', '-')} was {theirs.get(k)!r}, now {v!r}" for k, v in mine.items() if theirs.get(k) != v]
    if differ:
        raise CLIError(f"study {s.study_name!r} was made with other settings ({'; '.join(differ)}): "
                       "run it as it was made, or start another with --study NAME")
    return study


# ------------------------------------------------------------------ sampler, pruner --

def constraints(s: Settings):
    """Optuna's constraints_func: feasible (<= 0) when label accuracy >= the bar."""
    def constraints_func(trial):
        acc = trial.user_attrs.get("label_accuracy")
        return [s.min_label_accuracy - (acc if acc is not None else 0.0)]
    return constraints_func


def make_sampler(s: Settings, seed):
    optuna = require_optuna()
    S = optuna.samplers
    if s.sampler == "random":
        return S.RandomSampler(seed=seed)
    if s.sampler == "qmc":
        # every worker walks one Sobol sequence: the same seed everywhere
        return S.QMCSampler(qmc_type="sobol", scramble=True, seed=s.seed, independent_sampler=S.RandomSampler(seed),
                            warn_independent_sampling=False, warn_asynchronous_seeding=False)
    # constant_liar: running trials count as bad guesses, so parallel workers spread out
    return S.TPESampler(seed=seed, multivariate=True, constant_liar=True, warn_independent_sampling=False,
                        constraints_func=None if s.multi_objective else constraints(s))


def make_pruner(s: Settings):
    """Pruning compares FID at the same training step (reports come every --eval-every-steps).
    Off for a multi-objective study: Optuna prunes on one value only."""
    P = require_optuna().pruners
    if s.multi_objective or s.pruner == "none":
        return P.NopPruner()
    if s.pruner == "median":
        return P.MedianPruner(n_startup_trials=5, n_warmup_steps=s.eval_every_steps)
    return P.HyperbandPruner(min_resource=s.eval_every_steps, max_resource="auto", reduction_factor=3)


# ------------------------------------------------------------------ counting, ranking -

def counts_toward_total(trial):
    """Complete, pruned, or failed on its own (the trainer's error). A trial failed because its
    worker died (no error recorded) is retried instead and does not count."""
    from optuna.trial import TrialState
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or \
        (trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def feasible(trial, s: Settings):
    acc = trial.user_attrs.get("label_accuracy")
    return acc is not None and acc >= s.min_label_accuracy


def _fid(trial):
    v = trial.user_attrs.get("fid")
    return v if v is not None and math.isfinite(v) else math.inf


def pareto_front(trials):
    """The complete trials no other beats on both FID and 1 - label accuracy."""
    pts = [(t, (_fid(t), 1 - t.user_attrs.get("label_accuracy", 0.0))) for t in trials]
    return [t for t, (a, b) in pts
            if not any(c <= a and d <= b and (c < a or d < b) for _, (c, d) in pts)]


def ranked(trials, s: Settings):
    """Complete trials, best first: those meeting the label-accuracy bar by FID, then the
    rest by FID (multi-objective: the Pareto front by FID, then the rest)."""
    from optuna.trial import TrialState
    done = [t for t in trials if t.state == TrialState.COMPLETE and "fid" in t.user_attrs]
    if s.multi_objective:
        front = {t.number for t in pareto_front(done)}
        return sorted(done, key=lambda t: (t.number not in front, _fid(t), t.number))
    return sorted(done, key=lambda t: (not feasible(t, s), _fid(t), t.number))


def best_trials(trials, s: Settings):
    """The trials that keep their checkpoints: the best one (the Pareto front if multi-objective)."""
    order = ranked(trials, s)
    if s.multi_objective:
        return pareto_front(order)
    return order[:1]


# ------------------------------------------------------------------ disk policy ------

def trial_dir(s: Settings, trial):
    return s.study_dir / trial.user_attrs.get("run_dir", f"trial_{trial.number:04d}")


def apply_disk_policy(study, s: Settings):
    """Finished trials keep metrics.jsonl, config.json, samples/ and their logs; only the best
    (or the Pareto front) keeps checkpoints/. Running trials are not touched. Returns the
    folders whose checkpoints were removed now."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    keep = {t.number for t in best_trials(trials, s)}
    dropped = []
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and t.number not in keep:
            ckpts = trial_dir(s, t) / "checkpoints"
            if ckpts.is_dir():
                shutil.rmtree(ckpts, ignore_errors=True)
                dropped.append(ckpts.parent)
    return dropped
