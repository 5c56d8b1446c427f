"""``python -m experiments.bench.official_accuracy --official-root DIR``: ours vs theirs, accuracy.

For each pair of the ``official-code`` benchmark group, trains our method (through the harness,
:func:`experiments.loop.fit`, with its ``conf/method`` defaults) and the official code (built by
:mod:`experiments.bench.official` with its own defaults) for the same number of epochs on the
same Fashion-MNIST batches (the first ``--train`` training examples, standardised as the
harness does, one seeded permutation per epoch; all 10000 test examples), and prints both test
accuracies. Fashion-MNIST is read from Debian's ``/usr/share/datasets/fashion-mnist`` (no
download). Each side's accuracy is its own test function's (see ``official.Official``); for
HSIC theirs matches classes to output units (their ``get_accuracy_hsic``), ours is the argmax
of the format layer trained in the last quarter of the epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.bench import jobs, official
from experiments.bench.timing import limited_threads
from experiments.data import Dataset, minibatches
from experiments.data.idx import load_fashion_mnist
from experiments.loop import fit


@dataclass(frozen=True)
class Pair:
    """Our method and the official code compared.

    Attributes:
        method: our method's name.
        hidden: hidden widths of both networks.
        batch: batch size of both.
        overrides: our extra config overrides.
        theirs: builds the official implementation (root, data) -> :class:`official.Official`.
    """

    method: str
    hidden: tuple[int, ...]
    batch: int
    overrides: tuple[str, ...]
    theirs: Callable[[Path, Dataset], official.Official]


PAIRS: dict[str, Pair] = {
    "hsic": Pair(
        "hsic",
        (1024,) * 6,
        256,
        (),
        lambda root, data: official.hsic_model(root, 1024, 5, official.hsic_config(256)),
    ),
    "altmin100": Pair(
        "altmin", (100, 100), 200, (), lambda root, data: official.altmin_model(root, 784, 100)
    ),
    "altmin500": Pair(
        "altmin", (500, 500), 200, (), lambda root, data: official.altmin_model(root, 784, 500)
    ),
    "dtp": Pair(
        "dtp",
        (256,) * 5,
        128,
        ("model.activation=tanh", "model.init=orthogonal"),
        # their Fashion-MNIST config (same shapes as final_configs/mnist_DTP.py, its own rates)
        lambda root, data: official.dtp_model(
            root, True, "final_configs.fashion_mnist_DTP", batch_size=128
        ),
    ),
    "dni": Pair(
        "dni",
        (256, 256),
        64,
        ("method.hidden_sizes=[256]", "method.interfaces=[2]"),
        lambda root, data: official.dni_model(root, False, 64),
    ),
    "cdni": Pair(
        "cdni",
        (256, 256),
        64,
        ("method.hidden_sizes=[256]", "method.interfaces=[2]"),
        lambda root, data: official.dni_model(root, True, 64),
    ),
    # Their network without its batch norm, which our shared MLP leaves out (methods/dni.py).
    "dni_no_bn": Pair(
        "dni",
        (256, 256),
        64,
        ("method.hidden_sizes=[256]", "method.interfaces=[2]"),
        lambda root, data: official.dni_model(root, False, 64, batch_norm=False),
    ),
    "cdni_no_bn": Pair(
        "cdni",
        (256, 256),
        64,
        ("method.hidden_sizes=[256]", "method.interfaces=[2]"),
        lambda root, data: official.dni_model(root, True, 64, batch_norm=False),
    ),
}


def ours_accuracy(pair: Pair, data: Dataset, epochs: int, seed: int) -> float:
    """Our method's test accuracy after ``epochs`` harness epochs (weights seeded by ``seed``)."""
    hidden = ",".join(str(h) for h in pair.hidden)
    cfg = jobs.compose_config(
        [
            f"method={pair.method}",
            "data=fashion_mnist",
            f"train.batch_size={pair.batch}",
            f"model.hidden_sizes=[{hidden}]",
            *pair.overrides,
        ]
    )
    method = jobs.build_from_config(cfg, data, seed)
    generator = torch.Generator().manual_seed(seed)
    metrics = fit(
        method, data, epochs, pair.batch, cfg.train.eval_batch_size, generator, progress=False
    )
    return float(metrics["test_accuracy"])


def theirs_accuracy(pair: Pair, root: Path, data: Dataset, epochs: int, seed: int) -> float:
    """The official code's test accuracy after ``epochs`` of its epochs on the same batches."""
    torch.manual_seed(seed)
    built = pair.theirs(root, data)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        built.train(list(minibatches(data.x_train, data.y_train, pair.batch, generator)))
    test = list(minibatches(data.x_test, data.y_test, 1000))
    return float(built.evaluate(test))


def main(argv: Sequence[str] | None = None) -> list[tuple[str, float, float]]:
    """Parse the options, train every chosen pair, print and return (name, ours, theirs)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.official_accuracy")
    parser.add_argument(
        "--official-root",
        type=Path,
        default=os.environ.get(official.ENV_ROOT) or None,
        help=f"folder holding the official checkouts (default: ${official.ENV_ROOT})",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=10000, help="training examples used")
    parser.add_argument("--only", help=f"comma-separated pairs, of {', '.join(PAIRS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    names = list(PAIRS) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in PAIRS]
    if args.official_root is None or unknown or args.epochs < 1:
        problem = (
            f"--only: unknown pair {unknown[0]!r}; pairs: {', '.join(PAIRS)}"
            if unknown
            else "--epochs: must be at least 1"
            if args.epochs < 1
            else f"--official-root (or ${official.ENV_ROOT}) is needed"
        )
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    data = load_fashion_mnist(download=False, num_train=args.train)
    results = []
    print(f"Fashion-MNIST, {args.train} training examples, {args.epochs} epochs, seed {args.seed}")
    with limited_threads(args.threads):
        for name in names:
            pair = PAIRS[name]
            start = time.process_time()
            ours = ours_accuracy(pair, data, args.epochs, args.seed)
            middle = time.process_time()
            theirs = theirs_accuracy(pair, args.official_root, data, args.epochs, args.seed)
            end = time.process_time()
            results.append((name, ours, theirs))
            print(
                f"{name:10} ours {ours:.4f} ({middle - start:.0f} s)   "
                f"theirs {theirs:.4f} ({end - middle:.0f} s)",
                flush=True,
            )
    return results


if __name__ == "__main__":
    main()
