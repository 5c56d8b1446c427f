"""``python -m experiments.bench.fingerprint``: one SHA-256 per small seeded run (bit identity).

A refactor for speed must not change a single bit of what a run computes. This command trains
every registered method on a grid of tiny configurations (:func:`grid`: the MLP with each
activation, cross-entropy and MSE, float32 and float64; a small CNN with max/avg/no pooling; the
RNN with each cell; plus a few method options with their own code paths) for a few seeded epochs
through the shared loop (:func:`experiments.loop.fit`, as a run does), and hashes
(:func:`digest`) the model's parameters and buffers, the method's own state
(:meth:`~methods.Method.state_dict`: optimiser moments, inverses, synthetic modules, feedback
weights, ...), every logged metric but the wall-clock ones, and an evaluation pass on held-out
inputs. A configuration a method refuses when it is built (e.g. ``bptt`` on an MLP) is recorded
as ``skipped: <the reason>``; one whose training raises, as ``error: <the exception>``. Both are
compared like hashes.

Use it before and after a change (in a checkout of main, then in the branch's)::

    python -m experiments.bench.fingerprint --out /tmp/before.json          # on main
    python -m experiments.bench.fingerprint --against /tmp/before.json      # on the branch

``--against`` exits 1, listing them, if a configuration's value differs or if one of the file's
configurations (of the methods run) is no longer produced; configurations new since the file are
listed and accepted. ``--methods a,b`` runs only those methods. Everything runs on ``--threads``
(default 1) torch and BLAS threads: the same bits need the same thread count. The full grid
takes a few minutes of one core.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from omegaconf import OmegaConf

from experiments.bench.timing import limited_threads
from experiments.data import Dataset
from experiments.loop import fit
from experiments.train import CONF_DIR
from methods import Method, MethodConfigError, available_methods, build_method
from methods.losses import loss_for_task
from methods.networks import MLP
from methods.networks.cnn import build_cnn
from methods.networks.rnn import build_rnn

EPOCHS = 4  # HSIC's format phase is its last quarter of the epochs: epoch 4 reaches it
BATCH = 16
N_TRAIN = 2 * BATCH
N_TEST = 8
OUTPUTS = 3
# Wall-clock metrics of the loop: the only logged values that are not a function of the seed.
CLOCK_METRICS = ("epoch_seconds", "samples_per_second")

MLP_ACTIVATIONS = ("relu", "tanh", "sigmoid", "identity")
CNN_ACTIVATIONS = ("elu", "tanh", "relu")
CNN_POOLS = ("max", "avg", "none")
RNN_CELLS = ("rnn", "gru", "lstm")
LOSSES = ("ce", "mse")
DTYPES = ("float32", "float64")

# Method options with code paths of their own, each run on the first configurations of a
# network's grid, or on all of them (``-all``: altmin's second top-code loss on the MLP, FA's
# symmetric feedback on the CNN, as the checks of the kernels and FA-CNN branches did).
VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "altmin": [("mlp-all", {"top_code_loss": "scaled_mismatch"})],
    "dtp": [
        ("mlp", {"inverse_activation": "relu"}),
        ("mlp", {"top_target_layer": "output", "inverse_activation": "relu"}),
        ("mlp", {"schedule": "alternating"}),
    ],
    "fa": [("mlp", {"feedback": "symmetric"}), ("cnn-all", {"feedback": "symmetric"})],
    "hsic": [("mlp", {"estimator": "biased"}), ("mlp", {"median_heuristic": True})],
}


@dataclass(frozen=True)
class Config:
    """One seeded run of the grid.

    Attributes:
        method: a registered method's name.
        network: ``mlp``, ``cnn`` or ``rnn``.
        shape: the network's variable part: the MLP's or CNN's activation (the CNN's as
            ``<activation>/<pool>``), or the RNN's cell.
        loss: ``ce`` (classification, cross-entropy) or ``mse`` (regression, mean squared error).
        dtype: ``float32`` or ``float64`` (the model's parameters and the data).
        options: method options over ``conf/method/<method>.yaml``, as ``(key, value)`` pairs.
    """

    method: str
    network: str
    shape: str
    loss: str
    dtype: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """The configuration's key, e.g. ``dtp mlp tanh ce float32 schedule=alternating``."""
        extra = ",".join(f"{k}={v}" for k, v in self.options)
        return " ".join(filter(None, (self.method, self.network, self.shape, self.loss,
                                      self.dtype, extra)))  # fmt: skip


def _network_grid(network: str) -> Iterator[tuple[str, str, str]]:
    """``(shape, loss, dtype)`` of one network's configurations, the base one first."""
    if network == "mlp":
        yield from itertools.product(MLP_ACTIVATIONS, LOSSES, DTYPES)
    elif network == "cnn":
        for activation, pool, dtype in itertools.product(CNN_ACTIVATIONS, CNN_POOLS, DTYPES):
            yield f"{activation}/{pool}", "ce", dtype
        yield "elu/max", "mse", "float32"
    else:
        for cell, dtype in itertools.product(RNN_CELLS, DTYPES):
            yield cell, "ce", dtype
        yield "rnn", "mse", "float32"


def grid(methods: Sequence[str] | None = None) -> list[Config]:
    """The configurations of ``methods`` (default: every registered method), in run order.

    Every method gets every network's configurations (those it refuses end up skipped, with
    its reason), then its :data:`VARIANTS`, run on the MLP's first two configurations (relu,
    cross-entropy, float32 and float64) or the CNN's first, or (``-all``) on the whole grid.

    Raises:
        ValueError: naming an unregistered method.
    """
    known = available_methods()
    chosen = list(known if methods is None else methods)
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    configs = []
    for method in chosen:
        for network in ("mlp", "cnn", "rnn"):
            configs += [Config(method, network, *point) for point in _network_grid(network)]
        for where, options in VARIANTS.get(method, []):
            network, _, scope = where.partition("-")
            points = list(_network_grid(network))
            points = points if scope == "all" else points[: 2 if network == "mlp" else 1]
            pairs = tuple(options.items())
            configs += [Config(method, network, *point, pairs) for point in points]
    return configs


def method_options(name: str, extra: Mapping[str, Any] = ()) -> dict[str, Any]:
    """``conf/method/<name>.yaml`` as keyword options (without ``name``), updated by ``extra``."""
    options = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / f"{name}.yaml"))
    options.pop("name")
    options.update(dict(extra))
    return options


def dataset(config: Config) -> Dataset:
    """Seeded random inputs and targets of ``config``'s network, task and dtype.

    MLP: ``(n, 6)`` inputs; CNN: ``(n, 1, 8, 8)``; RNN: ``(n, 5, 1)`` sequences. Targets are
    :data:`OUTPUTS` classes (``ce``) or ``(n, OUTPUTS)`` regression values (``mse``).
    """
    shape = {"mlp": (6,), "cnn": (1, 8, 8), "rnn": (5, 1)}[config.network]
    dtype = getattr(torch, config.dtype)
    generator = torch.Generator().manual_seed(1)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *shape, generator=generator, dtype=dtype)
        if config.loss == "ce":
            return x, torch.randint(OUTPUTS, (n,), generator=generator)
        return x, torch.randn(n, OUTPUTS, generator=generator, dtype=dtype)

    (x_train, y_train), (x_test, y_test) = split(N_TRAIN), split(N_TEST)
    task = "classification" if config.loss == "ce" else "regression"
    return Dataset("fingerprint", task, OUTPUTS, x_train, y_train, x_test, y_test)


def build(config: Config, data: Dataset) -> Method:
    """``config``'s model (seed 0) and method, with the method's default options.

    Raises:
        methods.MethodConfigError, ValueError, TypeError: when the method or the model refuses
            the configuration (the caller records it as skipped).
    """
    torch.manual_seed(0)
    if config.network == "mlp":
        model = MLP(data.x_train.shape[1], [5, 4], OUTPUTS, activation=config.shape)
    elif config.network == "cnn":
        activation, pool = config.shape.split("/")
        model = build_cnn(
            data.x_train.shape[1:], OUTPUTS, [2, 3], kernel_size=3, padding=1,
            activation=activation, pool=pool, hidden_sizes=[5],
        )  # fmt: skip
    else:
        model = build_rnn(data.x_train.shape[1:], OUTPUTS, hidden_size=5, cell=config.shape)
    model = model.to(getattr(torch, config.dtype))
    loss = loss_for_task(data.task)
    return build_method(config.method, model, loss, method_options(config.method, config.options))


@dataclass
class Trained:
    """A configuration after training.

    Attributes:
        method: the trained method (its model is ``method.model``).
        history: the metrics the loop logged each epoch, without :data:`CLOCK_METRICS`.
        x_eval: the held-out inputs of the evaluation pass, ``(N_TEST, *input_shape)``.
    """

    method: Method
    history: list[dict[str, float]]
    x_eval: torch.Tensor


def train(config: Config, method: Method | None = None) -> Trained:
    """Train ``config`` for :data:`EPOCHS` epochs of ``fit`` (batches of :data:`BATCH`).

    Args:
        config: the configuration.
        method: its method as :func:`build` returned it (built here when ``None``).

    Raises:
        methods.MethodConfigError, ValueError, TypeError: from :func:`build`, when refused.
    """
    data = dataset(config)
    method = build(config, data) if method is None else method
    history: list[dict[str, float]] = []

    def log(epoch: int, metrics: Mapping[str, float]) -> None:
        history.append({k: v for k, v in metrics.items() if k not in CLOCK_METRICS})

    generator = torch.Generator().manual_seed(2)
    fit(method, data, EPOCHS, BATCH, N_TEST, generator, on_epoch=log, progress=False)
    return Trained(method, history, data.x_test)


def _feed(h: Any, value: Any, where: str) -> None:
    """Update the hash ``h`` with ``value``'s exact bits, and its path, type and shape."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{where}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"{where}:{value.dtype}:{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            _feed(h, value[key], f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _feed(h, item, f"{where}[{i}]")
    elif isinstance(value, float):
        h.update(f"{where}={value.hex()}".encode())  # every bit, NaN and infinities included
    else:
        h.update(f"{where}={value!r}".encode())


def digest(trained: Trained) -> str:
    """SHA-256 (hex) of the model's state, the method's state, the metrics and an evaluation.

    The evaluation pass is ``method.forward(x_eval)`` under ``torch.no_grad``. Tensors count by
    their bytes, floats by :meth:`float.hex`: any one-bit difference changes the digest.
    """
    method = trained.method
    h = hashlib.sha256()
    _feed(h, method.model.state_dict(), "model")
    _feed(h, method.state_dict(), "method")
    _feed(h, trained.history, "metrics")
    with torch.no_grad():
        _feed(h, method.forward(trained.x_eval), "eval")
    return h.hexdigest()


def fingerprint(config: Config) -> str:
    """:func:`digest` of ``config`` trained, or ``skipped: <reason>`` / ``error: <exception>``."""
    try:
        method = build(config, dataset(config))
    except MethodConfigError as refusal:  # the method's own refusal, with its reason
        return f"skipped: {_first_line(refusal)}"
    except Exception as error:  # noqa: BLE001 - any other failure to build is a bug: an error
        return f"error: {type(error).__name__}: {_first_line(error)}"
    try:
        return digest(train(config, method))
    except Exception as error:  # noqa: BLE001 - recorded and compared like a hash
        return f"error: {type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def compare(
    current: Mapping[str, str], saved: Mapping[str, str], methods: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """Configurations that differ, that are gone and that are new, against a saved file.

    Args:
        current: name -> value of this run.
        saved: name -> value read from ``--against``.
        methods: the methods run: only the saved configurations of these count as gone.

    Returns:
        ``(differ, gone, new)``, each a list of configuration names in their file/run order.
    """
    differ = [name for name in current if name in saved and saved[name] != current[name]]
    gone = [n for n in saved if n not in current and n.split(" ")[0] in methods]
    new = [name for name in current if name not in saved]
    return differ, gone, new


def run(configs: Sequence[Config], out: TextIO | None = None) -> dict[str, str]:
    """:func:`fingerprint` of each configuration, printing one line each; name -> value.

    A method's run of configurations of one network skipped for one reason prints one line
    (``bptt mlp: 16 configurations: skipped: ...``); the values keep every configuration.
    ``out``: where the lines go (default: the standard output at call time).
    """
    out = sys.stdout if out is None else out
    values = {}
    pending: list[Config] = []  # consecutive skipped configurations of one method and network

    def flush() -> None:
        if pending:
            first = pending[0]
            what = first.name if len(pending) == 1 else (
                f"{first.method} {first.network}: {len(pending)} configurations")  # fmt: skip
            print(f"{what}: {values[first.name]}", file=out, flush=True)
            pending.clear()

    for config in configs:
        value = values[config.name] = fingerprint(config)
        if pending and (
            (config.method, config.network, value)
            != (pending[0].method, pending[0].network, values[pending[0].name])
        ):
            flush()
        if value.startswith("skipped: "):
            pending.append(config)
        else:
            print(f"{config.name}: {value}", file=out, flush=True)
    flush()
    return values


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Parse the command line, fingerprint the grid, write or compare; returns name -> value.

    Exits 2 (one line) for a bad option or an unreadable ``--against`` file, 1 when
    ``--against`` finds a difference.
    """
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench.fingerprint",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--methods", help="comma-separated methods (default: all registered)")
    parser.add_argument("--out", type=Path, help="write name -> value as JSON here")
    parser.add_argument("--against", type=Path, help="compare with a JSON file of --out")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args = parser.parse_args(argv)
    try:
        methods = None
        if args.methods is not None:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            if not methods:
                raise ValueError("--methods: give at least one method, e.g. --methods dtp,fa")
        configs = grid(methods)
        if args.threads < 1:
            raise ValueError(f"--threads: must be at least 1, got {args.threads}")
        saved = None
        if args.against is not None:
            try:
                saved = json.loads(args.against.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"--against: cannot read {args.against}: {error}") from None
            if not isinstance(saved, dict):
                raise ValueError(f"--against: {args.against} is not a JSON object of --out")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    start = time.perf_counter()
    with limited_threads(args.threads):
        values = run(configs)
    seconds = time.perf_counter() - start
    skipped = sum(v.startswith("skipped: ") for v in values.values())
    errors = sum(v.startswith("error: ") for v in values.values())
    total = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    print(
        f"{len(values)} configurations ({len(values) - skipped - errors} trained, {skipped} "
        f"skipped, {errors} errors) in {seconds:.0f} s on {args.threads} thread(s); "
        f"all: {total}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(values, indent=1) + "\n")
        print(f"wrote {args.out}")
    if saved is not None:
        run_methods = sorted({c.method for c in configs})
        differ, gone, new = compare(values, saved, run_methods)
        for name in new:
            print(f"new (not in {args.against}): {name}")
        for name in gone:
            print(f"GONE (in {args.against}, not produced now): {name}")
        for name in differ:
            print(f"DIFFERS: {name}: {saved[name]} -> {values[name]}")
        same = len(values) - len(differ) - len(new)
        print(f"against {args.against}: {same} same, {len(differ)} differ, {len(gone)} gone, "
              f"{len(new)} new")  # fmt: skip
        if differ or gone:
            sys.exit(1)
    return values


if __name__ == "__main__":
    main()
