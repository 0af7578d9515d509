"""Every benchmark as data: a Spec says what to build and time, a Case is a Spec at one
implementation and batch size. Both runners (bench/*.py through pytest-benchmark, and
`python -m cganraw.bench`) take their cases from `all_cases`, so they time the same work.

    Spec     suite (the bench/ file it belongs to), family (the report's group), name,
             prepare(xp, batch, impl, mode) -> Prepared, the implementations it runs on
    Case     spec + impl ("numpy", "cuda", "cuda:v2", ...) + batch; its id, such as
             "relu_fwd-Nx256-numpy-b64", is what --filter and pytest -k match
    Prepared the closure to time, its op and shape labels, the bytes, FLOPs or images one
             call moves, a check of its result, and optionally a PyTorch peer step
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cganraw.bench.shapes import batches_for

SUITES = ("ops", "conv", "gemm", "model_pass", "train_step")


@dataclass
class Prepared:
    fn: Callable
    op: str
    shape: str
    bytes_moved: int | None = None     # bytes an ideal implementation reads + writes (GB/s)
    flops: int | None = None           # floating-point operations (GFLOP/s)
    items: int | None = None           # images per call (images/s)
    check: Callable | None = None      # check(result of fn) raises AssertionError when wrong
    extra: dict = field(default_factory=dict)
    rounds: int | None = None          # fixed rounds of one call each (training steps)
    peer: Callable | None = None       # the same work in PyTorch, alternated with fn


@dataclass(frozen=True)
class Spec:
    suite: str
    family: str
    name: str                          # batch- and implementation-free part of the id
    prepare: Callable                  # prepare(xp, batch, impl, mode) -> Prepared
    impls: tuple = ("numpy", "cuda")
    batched: bool = True


@dataclass(frozen=True)
class Case:
    spec: Spec
    impl: str
    batch: int | None

    @property
    def backend(self) -> str:
        """The cganraw backend the case runs on: numpy, or cuda for every GPU implementation."""
        return "numpy" if self.impl == "numpy" else "cuda"

    @property
    def id(self) -> str:
        parts = [self.spec.name, self.impl.replace(":", "-")]
        if self.batch is not None:
            parts.append(f"b{self.batch}")
        return "-".join(parts)


def specs() -> list[Spec]:
    from cganraw.bench import ops_cases, train_cases
    return ops_cases.specs() + train_cases.specs()


def all_cases(mode: str, suites=None) -> list[Case]:
    """Every case of `suites` (all by default) at the batch sizes of `mode`."""
    out = []
    for spec in specs():
        if suites is not None and spec.suite not in suites:
            continue
        batches = batches_for(mode) if spec.batched else (None,)
        out += [Case(spec, impl, batch) for impl in spec.impls for batch in batches]
    return out


# ------------------------------------------------------------------ selection -----

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def matches(expr: str | None, text: str) -> bool:
    """pytest -k's keyword expressions: words matched as case-insensitive substrings of
    `text`, combined with and, or, not and parentheses."""
    if not expr or not expr.strip():
        return True
    tokens = _TOKEN.findall(expr)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def disjunction():
        value = conjunction()
        while peek() == "or":
            take()
            value = conjunction() or value
        return value

    def conjunction():
        value = negation()
        while peek() == "and":
            take()
            value = negation() and value
        return value

    def negation():
        if peek() == "not":
            take()
            return not negation()
        tok = take() if peek() is not None else None
        if tok == "(":
            value = disjunction()
            if peek() != ")":
                raise ValueError(f"--filter {expr!r}: missing ')'")
            take()
            return value
        if tok is None or tok in (")", "and", "or"):
            raise ValueError(f"--filter {expr!r}: expected a word at {tok or 'the end'!r}")
        return tok.lower() in text.lower()

    value = disjunction()
    if pos != len(tokens):
        raise ValueError(f"--filter {expr!r}: unexpected {tokens[pos]!r}")
    return value


def select(cases, expr: str | None) -> list[Case]:
    """The cases whose id (or suite) matches the keyword expression `expr`."""
    return [c for c in cases if matches(expr, f"{c.spec.suite} {c.id}")]
