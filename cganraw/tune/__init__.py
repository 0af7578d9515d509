"""Hyperparameter search on Optuna: `python -m cganraw.tune --dataset mnist`.

space    the search space: trainer flags read from cganraw.train.build_parser(), JSON/YAML files
study    settings, RDB storage (heartbeat, retries), sampler, pruner, ranking, disk policy
worker   one worker: each trial a `python -m cganraw.train` subprocess, followed and pruned
report   the summary table, Optuna's matplotlib plots, the best trial's command
command  the command line
"""
