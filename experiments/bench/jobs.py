"""The timed units of work: a harness epoch, a bare torch epoch, a training step, a GEMM.

Each builder returns a :data:`~experiments.bench.timing.Job`, a callable doing one unit of work
on state built once (model, optimiser, data, a seeded shuffling generator that continues from
call to call, so every call of two jobs built with the same seed sees the same batches).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from experiments.bench.timing import Job
from experiments.data import Dataset, minibatches
from experiments.loop import Diverged, fit
from experiments.train import CONF_DIR, build_model
from methods import Method, build_method, make_optimizer
from methods.losses import loss_for_task


def random_dataset(
    name: str,
    input_shape: Sequence[int],
    n_train: int,
    n_test: int,
    classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """A classification :class:`Dataset` of standard-normal inputs and uniform labels.

    Timing does not depend on the values, only on the shapes, so random data of the real
    dataset's example shape stands in for it (no download, no generation cost).

    Args:
        name: the dataset's name in the table.
        input_shape: one example's shape, e.g. ``(40,)``.
        n_train: training examples.
        n_test: test examples (evaluated after every harness epoch).
        classes: number of classes.
        seed: seed of the values.
    """
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *input_shape, generator=generator)
        return x, torch.randint(classes, (n,), generator=generator)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    return Dataset(name, "classification", classes, x_train, y_train, x_test, y_test)


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/config.yaml`` composed with ``overrides``, as ``python -m experiments.train`` does.

    The method's options thus come from ``conf/method/<name>.yaml`` and, for a method, model and
    data that have them, ``conf/tuned/<method>_<model>_<data>.yaml``.

    Raises:
        hydra.errors.HydraException: for an unknown group option or key.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def build_from_config(cfg: DictConfig, data: Dataset, seed: int = 0) -> Method:
    """The model and method of ``cfg`` for ``data``'s shapes, initialised from ``seed``.

    Raises:
        experiments.errors.ConfigError: if the model builder rejects its options.
        methods.MethodConfigError: if the method rejects its options.
    """
    torch.manual_seed(seed)
    model = build_model(cfg, data)
    options = OmegaConf.to_container(cfg.method, resolve=True)
    options.pop("name")
    return build_method(cfg.method.name, model, loss_for_task(data.task), options)


def harness_epoch(
    method: Method, data: Dataset, batch_size: int, eval_batch_size: int, seed: int = 0
) -> Job:
    """One epoch of the shared loop: :func:`experiments.loop.fit` with ``epochs=1``.

    This is what a run pays per epoch: the method's updates, the loop's per-batch bookkeeping
    (metrics, divergence check), the test-split evaluation and the method's epoch metrics.
    """
    generator = torch.Generator().manual_seed(seed)

    def run() -> None:
        fit(method, data, 1, batch_size, eval_batch_size, generator, progress=False)

    return run


def train_epoch(method: Method, data: Dataset, batch_size: int, seed: int = 0) -> Job:
    """One epoch of :func:`experiments.loop.fit`'s training part only: no evaluation.

    The same calls, in the same order, as ``fit(method, data, 1, ...)`` up to the end of its
    batch loop: the budget check and lifecycle hooks, one :meth:`Method.step` per batch of the
    same seeded permutation, the loss read and divergence check, and the example-weighted
    metric sums. Left out: the test-split evaluation, :meth:`Method.epoch_metrics` (e.g. DNI's
    cosine probe) and the log line. The method's epoch accumulators are cleared at the end as
    ``fit`` does. One call leaves the same weights as one ``fit`` epoch of the same seed
    (tested), so it compares with an official training loop that evaluates nothing.

    Raises:
        experiments.loop.Diverged: if a batch loss is NaN or infinite.
    """
    generator = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(len(data.x_train) / batch_size)

    def run() -> None:
        method.check_budget(1, n_batches)
        method.on_train_start(1, n_batches)
        method.on_epoch_start(1)
        sums: dict[str, float] = defaultdict(float)
        for step, (x, y) in enumerate(
            minibatches(data.x_train, data.y_train, batch_size, generator), start=1
        ):
            if data.train_transform is not None:
                x = data.train_transform(x, generator)
            batch_metrics = method.step(x, y)
            loss = float(batch_metrics["loss"])
            if not math.isfinite(loss):
                raise Diverged(step, loss, "train")
            for key, value in batch_metrics.items():
                sums[key] += float(value) * len(x)
        method.reset_epoch_metrics()

    return run


def bare_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
    batch_size: int,
    eval_batch_size: int,
    seed: int = 0,
) -> Job:
    """One epoch of a hand-written torch loop: the floor the harness is measured against.

    The same batches as :func:`harness_epoch` with the same ``seed`` (one permutation per epoch
    from a generator of that seed), cross-entropy, the given optimiser, then the same
    evaluation of the test split (loss and accuracy); the training loss is summed as a tensor
    and read once per epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    x, y = data.x_train, data.y_train

    def run() -> None:
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = torch.zeros(())
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            xb, yb = x[index], y[index]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(xb)
        model.eval()
        with torch.no_grad():
            correct = torch.zeros(())
            for start in range(0, len(data.x_test), eval_batch_size):
                xb = data.x_test[start : start + eval_batch_size]
                yb = data.y_test[start : start + eval_batch_size]
                output = model(xb)
                total += F.cross_entropy(output, yb, reduction="sum")
                correct += (output.argmax(1) == yb).sum()
        float(total), float(correct)

    return run


def bare_twin(method: Method, cfg: DictConfig, data: Dataset, seed: int = 0) -> torch.nn.Module:
    """A second model built exactly as ``method``'s (same config, same initial weights)."""
    torch.manual_seed(seed)
    model = build_model(cfg, data)
    model.load_state_dict(method.model.state_dict())
    return model


def bare_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """The optimiser ``method=backprop`` would build from ``cfg`` (same class and options)."""
    return make_optimizer(model.parameters(), OmegaConf.to_container(cfg.method.optimizer))


def step_job(method: Method, x: torch.Tensor, y: torch.Tensor) -> Job:
    """One training update of ``method`` on the fixed batch ``(x, y)`` (:meth:`Method.step`)."""

    def run() -> None:
        method.step(x, y)

    return run


def mlp_step_flops(sizes: Sequence[int], batch: int) -> float:
    """Multiply-add FLOPs of one forward + backward pass of an MLP, ``6 * batch * sum(in*out)``.

    Forward: ``2 * batch * in * out`` per layer; backward: twice that (input and weight
    gradients). Bias, activation and optimiser work are left out (they are O(width), not
    O(width^2)).

    Args:
        sizes: layer widths from input to output, e.g. ``[784, 2048, 2048, 10]``.
        batch: examples per step.
    """
    return 6.0 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def gemm_job(n: int, seed: int = 0) -> tuple[Job, float]:
    """``torch.matmul`` of two ``(n, n)`` float32 matrices into a preallocated output.

    Returns:
        The job and its FLOPs, ``2 n^3``.
    """
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)

    def run() -> None:
        torch.matmul(a, b, out=out)

    return run, 2.0 * n**3
