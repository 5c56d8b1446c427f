"""``python -m experiments.bench.profile JOB [--tool torch|cprofile]``: where an epoch's time goes.

Profiles a few harness epochs of one method (or the bare torch loop) on the MNIST-1D shapes of
the benchmark (random data, 40-256-256-10, batch 100, 4000 examples, 1 thread) and prints the
top entries: with ``torch`` (default), torch operators by self CPU time
(:mod:`torch.profiler`); with ``cprofile``, Python functions by own time (:mod:`cProfile`,
which inflates Python-side costs but shows the loop's bookkeeping).

``JOB`` is a method name (``backprop`` runs the harness) or ``bare`` (the bare torch loop).
With ``--official-root DIR``, ``JOB`` is a method of the ``official-code`` group (``hsic``,
``altmin``, ``dtp``, ``dni``, ``cdni``) and every case of it is profiled on the official shapes:
our train-only epoch, then the official code's epoch (:mod:`experiments.bench.official`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from experiments.bench import jobs
from experiments.bench.cases import Shapes, official_code_cases
from experiments.bench.timing import Job, limited_threads

SHAPES = Shapes("mnist1d", (40,), 4000, 400, (256, 256), 100)


def make_job(name: str) -> Job:
    """A harness epoch of method ``name``, or the bare loop for ``"bare"``, on :data:`SHAPES`."""
    data = SHAPES.dataset()
    method_name = "backprop" if name == "bare" else name
    overrides = [f"method={method_name}", f"data={SHAPES.data}"]
    cfg = jobs.compose_config(overrides)
    method = jobs.build_from_config(cfg, data)
    if name == "bare":
        model = jobs.bare_twin(method, cfg, data)
        optimizer = jobs.bare_optimizer(model, cfg)
        return jobs.bare_epoch(model, optimizer, data, SHAPES.batch, cfg.train.eval_batch_size)
    return jobs.harness_epoch(method, data, SHAPES.batch, cfg.train.eval_batch_size)


def profile_job(job: Job, tool: str, epochs: int, top: int) -> str:
    """The ``top`` entries of ``epochs`` calls of ``job`` (after one warm-up call)."""
    job()
    if tool == "torch":
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(epochs):
                job()
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(epochs):
        job()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def official_jobs(method: str, root: Path) -> dict[str, Job]:
    """``"<case> | <job>" -> job`` for every ``official-code`` case of ``method``.

    Raises:
        ValueError: if no case of ``method`` has its checkout under ``root``.
    """
    chosen = {}
    for case in official_code_cases(root, tiny=False):
        if method in case.methods:
            for name, job in case.build().jobs.items():
                chosen[f"{case.name} | {name}"] = job
    if not chosen:
        raise ValueError(f"{method}: no official-code case (or its checkout) under {root}")
    return chosen


def main(argv: list[str] | None = None) -> str:
    """Profile ``epochs`` epochs (after one warm-up epoch); print and return the table(s)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.profile")
    parser.add_argument("job", help="a method name, or 'bare' for the bare torch loop")
    parser.add_argument("--tool", choices=("torch", "cprofile"), default="torch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--official-root", type=Path, help="profile the official-code cases of JOB, both sides"
    )
    args = parser.parse_args(argv)
    with limited_threads(1):
        if args.official_root is None:
            named = {args.job: make_job(args.job)}
        else:
            named = official_jobs(args.job, args.official_root)
        parts = [
            f"== {name}\n{profile_job(job, args.tool, args.epochs, args.top)}"
            for name, job in named.items()
        ]
    text = "\n".join(parts)
    print(text)
    return text


if __name__ == "__main__":
    main()
