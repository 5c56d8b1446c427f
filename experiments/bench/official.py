"""The official implementations' own training epochs, built from their public checkouts.

Each builder imports the official modules from a checkout under a root folder (never from the
project, never from the network), builds the official model, optimisers and training step with
the official configuration, and returns a :data:`~experiments.bench.timing.Job` that runs one
of their training epochs over batches of a :class:`~experiments.data.Dataset` (the same seeded
permutation per call as :func:`experiments.bench.jobs.train_epoch`, so both sides see the same
batches). Only what is needed to call their epoch on in-memory batches is adapted; every
adaptation is listed in ``docs/performance.md`` ("Against the official code") and next to the
code that makes it:

- their data loaders are bypassed: a list of ``(x, y)`` batches replaces each ``DataLoader``
  (their per-example ``torchvision`` transforms are thus not timed, which favours them);
- ``torchvision`` and ``tensorboardX``, imported at module level but used only for their data
  loading and logging, are replaced by empty stand-ins when not installed
  (:func:`install_stand_ins`);
- their progress bars and prints go to a discarded buffer;
- code that cannot be called for one epoch alone is re-typed line for line around their
  functions: alt-min's epoch loop (in a script's ``__main__`` block) and the few set-up lines of
  DTP's ``train()`` (which runs every epoch and the tests); a script that runs on import (the
  DNI example) is executed with ``--epochs 0`` and one removed torch API ported
  (``loss.data[0]`` -> ``loss.item()``).

Every function raises :class:`OfficialCodeMissing` (one line: the folder, repository and
commit) when the checkout is not there.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import tempfile
import types
import warnings
from argparse import Namespace
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from experiments.bench.timing import Job
from experiments.data import Dataset, minibatches

ENV_ROOT = "BENCH_OFFICIAL_ROOT"


@dataclass(frozen=True)
class Checkout:
    """Where one official repository is expected and which version was measured.

    Attributes:
        folder: its folder under the root (``--official-root``).
        repo: ``owner/name`` on GitHub.
        commit: the commit measured (40 hex digits).
    """

    folder: str
    repo: str
    commit: str

    @property
    def label(self) -> str:
        """E.g. ``official choasma/HSIC-bottleneck@9f1fe24``."""
        return f"official {self.repo}@{self.commit[:7]}"


CHECKOUTS: dict[str, Checkout] = {
    "hsic": Checkout(
        "HSIC-bottleneck", "choasma/HSIC-bottleneck", "9f1fe2447592d61c0ba524aad0ff0820ae2ba9cb"
    ),
    "altmin": Checkout(
        "online-alt-min", "IBM/online-alt-min", "ef31aaad639c0880df8700d34613164298bcadd0"
    ),
    "dtp": Checkout(
        "theoretical_framework_for_target_propagation",
        "meulemansalex/theoretical_framework_for_target_propagation",
        "b6ee350c238be645e9cb42e12c79606f28f20f11",
    ),
    "dni": Checkout("dni-pytorch", "koz4k/dni-pytorch", "b14a07cab049a72c104b57dcdb56730ab8dbafb1"),
}


@dataclass
class Official:
    """One official implementation, built and ready to train.

    Attributes:
        model: their model (an ``nn.Module``).
        train: ``train(batches)`` runs one of their training epochs over ``[(x, y), ...]``.
        evaluate: ``evaluate(batches)`` is their test accuracy (a fraction) over
            ``[(x, y), ...]``, by their own test function where they have one.
    """

    model: nn.Module
    train: Callable[[list], None]
    evaluate: Callable[[list], float]


class OfficialCodeMissing(FileNotFoundError):
    """An official checkout is not under the given root."""


def checkout_path(root: Path, key: str) -> Path:
    """The folder of checkout ``key`` (a :data:`CHECKOUTS` key) under ``root``.

    Raises:
        OfficialCodeMissing: if that folder does not exist, naming the repository and commit.
    """
    spec = CHECKOUTS[key]
    path = Path(root) / spec.folder
    if not path.is_dir():
        raise OfficialCodeMissing(
            f"{path}: not found; put https://github.com/{spec.repo} at commit {spec.commit} "
            "there (docs/performance.md, 'Against the official code')"
        )
    return path


def missing(root: Path) -> list[str]:
    """One line per official checkout absent from ``root`` (empty when all are there)."""
    lines = []
    for key in CHECKOUTS:
        try:
            checkout_path(root, key)
        except OfficialCodeMissing as error:
            lines.append(str(error))
    return lines


def install_stand_ins() -> None:
    """Empty ``torchvision`` / ``tensorboardX`` modules, only where they are not installed.

    The official modules import them at module level for data loading (``datasets``,
    ``transforms``) and logging (``SummaryWriter``), which the benchmark bypasses. Attributes
    used while building (``transforms.Compose`` and friends) are identity stand-ins.
    """
    try:
        importlib.import_module("torchvision")
    except ImportError:
        vision = types.ModuleType("torchvision")
        vision.datasets = types.ModuleType("torchvision.datasets")
        vision.transforms = types.ModuleType("torchvision.transforms")
        for name in ("Compose", "ToTensor", "Normalize"):
            setattr(vision.transforms, name, lambda *args, **kwargs: None)
        sys.modules.update(
            {
                "torchvision": vision,
                "torchvision.datasets": vision.datasets,
                "torchvision.transforms": vision.transforms,
            }
        )
    try:
        importlib.import_module("tensorboardX")
    except ImportError:
        board = types.ModuleType("tensorboardX")
        board.SummaryWriter = object
        sys.modules["tensorboardX"] = board


@contextlib.contextmanager
def inside(path: Path) -> Iterator[None]:
    """``path`` first on ``sys.path`` and a scratch working folder, meanwhile.

    Their modules import each other as top-level modules, and some create ``./assets`` or
    ``./logs`` when imported or run; the scratch folder is deleted afterwards.
    """
    previous = os.getcwd()
    sys.path.insert(0, str(path))
    with tempfile.TemporaryDirectory(prefix="bench-official-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)
            sys.path.remove(str(path))


def import_from(root: Path, key: str, *names: str, subfolder: str = "") -> list[types.ModuleType]:
    """Import modules ``names`` from checkout ``key`` (its ``subfolder``) under ``root``.

    They are imported :func:`inside` the checkout, quietly, after :func:`install_stand_ins`.

    Raises:
        OfficialCodeMissing: if the checkout is not there.
    """
    path = checkout_path(root, key) / subfolder
    install_stand_ins()
    with inside(path), quiet():
        return [importlib.import_module(name) for name in names]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Their progress bars, prints and deprecation warnings go to a discarded buffer."""
    sink = io.StringIO()
    with (
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def batch_lists(data: Dataset, batch_size: int, seed: int = 0):
    """A callable giving each epoch's ``[(x, y), ...]``, the permutation continuing per call.

    The same batches, call for call, as :func:`experiments.bench.jobs.train_epoch` with the
    same ``seed``; the list is built inside the timed call, as ours is.
    """
    generator = torch.Generator().manual_seed(seed)

    def epoch() -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(minibatches(data.x_train, data.y_train, batch_size, generator))

    return epoch


# -- HSIC bottleneck (choasma/HSIC-bottleneck) ------------------------------------------------


def hsic_config(batch_size: int) -> dict:
    """Their ``config/hsicsolve-beta.yaml`` (the 1024-wide, batch-256 MNIST net) for CPU."""
    return {
        "batch_size": batch_size,
        "learning_rate": 0.01,
        "sigma": 5.0,
        "lambda_x": 1.0,
        "lambda_y": 5.0,
        "device": "cpu",
        "task": "hsic-solve",
        "log_batch_interval": 25,
    }


def hsic_model(root: Path, hidden_width: int, n_layers: int, config: dict | None = None):
    """Their ``ModelLinear`` (``784 - width x (n_layers + 1) - 10``) and a one-epoch runner.

    ``n_layers`` is their option: the net has ``n_layers + 1`` hidden layers of
    ``hidden_width`` (Linear, BatchNorm without affine, ReLU) and a 10-unit output block, all
    trained by their ``hsic_train`` (one SGD optimiser rebuilt per layer per batch, the whole
    forward pass re-run before each layer's step).

    Their accuracy (``evaluate``) is their ``get_accuracy_hsic``: each class is matched to the
    output unit with the largest mean activation on it (no format layer).
    """
    # their package creates ./assets/... on import: inside() runs it in a scratch folder
    train_hsic, linear, misc = import_from(
        root,
        "hsic",
        "hsicbt.core.train_hsic",
        "hsicbt.model.mhlinear",
        "hsicbt.utils.misc",
        subfolder="source",
    )
    model = linear.ModelLinear(
        hidden_width=hidden_width,
        n_layers=n_layers,
        atype="relu",
        last_hidden_width=10,
        data_code="mnist",
    )
    settings = dict(config or hsic_config(0))
    epochs = iter(range(1, 1 << 30))

    def train(batches) -> None:
        settings["batch_size"] = len(batches[0][0])
        with quiet():
            train_hsic.hsic_train(next(epochs), model, batches, settings)

    def evaluate(batches) -> float:
        with torch.no_grad():
            return misc.get_accuracy_hsic(model, batches)[0] / 100.0

    return Official(model, train, evaluate)


def hsic_job(
    root: Path, data: Dataset, batch_size: int, hidden_width: int, n_layers: int, seed: int = 0
) -> Job:
    """One epoch of their ``hsic_train`` (the HSIC phase) on ``data``'s batches."""
    torch.manual_seed(seed)
    train = hsic_model(root, hidden_width, n_layers, hsic_config(batch_size)).train
    batches = batch_lists(data, batch_size, seed)
    return lambda: train(batches())


# -- online alternating minimisation (IBM/online-alt-min) -------------------------------------


def altmin_model(root: Path, n_inputs: int, hidden: int, n_hidden_layers: int = 2):
    """Their ``FFNet`` (batch norm, no biases) split by ``get_mods``, as ``run_altmin_sgd.py``.

    Defaults of ``run_altmin_sgd.py``: Adam lr 0.008 for every layer (``--lr-weights``,
    ``--lr-out``), halved every 8 epochs; 5 code steps of SGD lr 0.3; mu 0.003, no increase;
    no sparsity terms.

    Their accuracy is their ``models.test``.
    """
    altmin, models = import_from(root, "altmin", "altmin", "models")
    model = models.FFNet(
        n_inputs, n_hiddens=hidden, n_hidden_layers=n_hidden_layers, batchnorm=True, bias=False
    )
    model = altmin.get_mods(
        model,
        optimizer="Adam",
        optimizer_params={"lr": 0.008},
        scheduler=lambda epoch: 1 / 2 ** (epoch // 8),
    )
    model[-1].optimizer.param_groups[0]["lr"] = 0.008
    criterion = nn.CrossEntropyLoss()
    mu = 0.003

    def train(batches) -> None:
        # The body of run_altmin_sgd.py's epoch loop (its __main__ block), defaults as above;
        # per-batch test logging is off by default (--log-first-epoch), the loss print kept.
        with quiet():
            for batch_idx, (data, targets) in enumerate(batches):
                model.train()
                with torch.no_grad():
                    outputs, codes = altmin.get_codes(model, data)
                codes = altmin.update_codes(
                    codes, model, targets, criterion, mu, lambda_c=0.0, n_iter=5, lr=0.3
                )
                altmin.update_last_layer_(model[-1], codes[-1], targets, criterion, n_iter=1)
                altmin.update_hidden_weights_adam_(model, data, codes, lambda_w=0.0, n_iter=1)
                if batch_idx % 100 == 0:
                    print(f"Loss: {criterion(outputs, targets).item():.6f}")
            altmin.scheduler_step(model)

    def evaluate(batches) -> float:
        return models.test(model, _Loader(batches))

    return Official(model, train, evaluate)


def altmin_job(root: Path, data: Dataset, batch_size: int, hidden: int, seed: int = 0) -> Job:
    """One epoch of their online alt-min loop on ``data``'s batches."""
    torch.manual_seed(seed)
    train = altmin_model(root, data.x_train[0].numel(), hidden).train
    batches = batch_lists(data, batch_size, seed)
    return lambda: train(batches())


# -- DTP (meulemansalex/theoretical_framework_for_target_propagation) -------------------------


class _Captured(Exception):
    pass


def _fake_dataset(*args, **kwargs):
    return torch.utils.data.TensorDataset(torch.zeros(1, 1, 28, 28), torch.zeros(1).long())


@contextlib.contextmanager
def fake_datasets() -> Iterator[None]:
    """``torchvision.datasets.MNIST`` / ``FashionMNIST`` give a one-example dataset meanwhile.

    Their scripts build ``DataLoader``s over these (downloading them) before training; the
    benchmark feeds its own batches, so a stand-in that is never iterated is enough.
    """
    datasets = sys.modules["torchvision"].datasets
    saved = {name: getattr(datasets, name, None) for name in ("MNIST", "FashionMNIST")}
    for name in saved:
        setattr(datasets, name, _fake_dataset)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(datasets, name)
            else:
                setattr(datasets, name, value)


def dtp_model(
    root: Path,
    double_precision: bool = True,
    config_module: str = "final_configs.mnist_DTP",
    **overrides,
):
    """Their DTP network, optimisers and training step, built by their own ``main.run()``.

    Their ``run_config.py`` turns ``config_module``'s dict into command-line arguments, their
    ``main.run()`` parses and post-processes them and builds the network; its call of
    ``train`` is intercepted, so nothing is trained or loaded. ``double_precision=False`` drops
    ``--double_precision`` (their default for these configs is float64). ``overrides`` replace
    config entries (e.g. ``size_hidden=32`` for tests). Added: ``--no_cuda``, ``--no_val_set``.
    The global default dtype their ``main.run()`` sets is restored afterwards and set again
    around each epoch.

    ``train`` runs one epoch of their ``train_parallel`` (forward and feedback weights per
    batch) and the config's extra feedback epochs; ``evaluate`` is their ``lib.train.test``.
    """
    path = checkout_path(root, "dtp")
    install_stand_ins()
    previous = torch.get_default_dtype()
    with inside(path), quiet():
        main = importlib.import_module("main")
        run_config = importlib.import_module("run_config")
        lib_train = importlib.import_module("lib.train")
        utils = importlib.import_module("lib.utils")
        config = dict(importlib.import_module(config_module).config)
        config.update(double_precision=double_precision, no_cuda=True, no_val_set=True)
        config.update(overrides)
        captured: dict = {}

        def capture(**kwargs):
            captured.update(kwargs)
            raise _Captured

        saved = (main.train, sys.argv)
        main.train = capture
        try:
            with fake_datasets():
                run_config._override_cmd_arg(config)
                main.run()
        except _Captured:
            pass
        finally:
            main.train, sys.argv = saved
            torch.set_default_dtype(previous)
    args, net, device = captured["args"], captured["net"], captured["device"]
    dtype = torch.float64 if args.double_precision else torch.float32
    # The set-up lines of their lib/train.py train() (the fields train_parallel reads).
    state = Namespace(summary=captured["summary"], batch_idx=1, batch_idx_fb=1, init_idx=1)
    with quiet():
        state.forward_optimizer, state.feedback_optimizer = utils.choose_optimizer(args, net)
    state.loss_function = nn.CrossEntropyLoss()
    state.epochs = 0

    def train(batches) -> None:
        state.accuracies = np.array([])
        state.losses = np.array([])
        state.reconstruction_losses = np.array([])
        torch.set_default_dtype(dtype)
        try:
            lib_train.train_parallel(args, state, device, batches, net, None)
            for _ in range(args.extra_fb_epochs):
                lib_train.train_only_feedback_parameters(
                    args, state, device, batches, net, None, log=False
                )
        finally:
            torch.set_default_dtype(previous)

    def evaluate(batches) -> float:
        torch.set_default_dtype(dtype)
        try:
            return float(lib_train.test(args, device, net, batches, state.loss_function)[0])
        finally:
            torch.set_default_dtype(previous)

    return Official(net, train, evaluate)


def dtp_job(
    root: Path,
    data: Dataset,
    batch_size: int,
    double_precision: bool = True,
    seed: int = 0,
    **overrides,
) -> Job:
    """One epoch of their DTP (``final_configs/mnist_DTP.py``) on ``data``'s batches."""
    train = dtp_model(root, double_precision, batch_size=batch_size, **overrides).train
    batches = batch_lists(data, batch_size, seed)
    return lambda: train(batches())


# -- DNI / cDNI (koz4k/dni-pytorch) -----------------------------------------------------------


class _Loader(list):
    """Batches with the ``.dataset`` length their logging line reads."""

    def __init__(self, batches) -> None:
        super().__init__(batches)
        self.dataset = range(sum(len(x) for x, _ in batches))


def dni_model(root: Path, context: bool = False, batch_size: int = 64, batch_norm: bool = True):
    """Their ``examples/mnist-mlp/main.py`` with ``--dni`` (and ``--context`` for cDNI).

    ``batch_norm=False`` replaces their three ``BatchNorm1d`` layers by identities and changes
    nothing else (no biases, same optimiser): the network our shared MLP matches, so that the
    accuracy comparison can separate batch norm from the learning rule.

    784-256-256-10 with batch norm and no biases, one ``BackwardInterface`` after the second
    hidden layer with a ``BasicSynthesizer`` of one 256-unit hidden layer, Adam lr 1e-3 over
    all parameters. The script is executed with ``--epochs 0 --no-cuda`` (it trains on import
    otherwise), with ``loss.data[0]`` ported to ``loss.item()`` (indexing a 0-dim tensor was
    removed from torch); its ``train(epoch)`` is then called on our batches.

    ``train`` calls their ``train(epoch)``; ``evaluate`` counts argmax hits in eval mode, as
    their ``test()`` does (which itself needs their test loader and prints only).
    """
    path = checkout_path(root, "dni")
    script = path / "examples" / "mnist-mlp" / "main.py"
    install_stand_ins()
    source = script.read_text().replace(".data[0]", ".item()")
    argv = ["main.py", "--dni", "--no-cuda", "--epochs", "0", "--batch-size", str(batch_size)]
    if context:
        argv.append("--context")
    namespace = {"__name__": "official_dni_mnist_mlp", "__file__": str(script)}
    saved_argv = sys.argv
    with inside(path), quiet(), fake_datasets():
        sys.argv = argv
        try:
            exec(compile(source, str(script), "exec"), namespace)  # noqa: S102 - their script
        finally:
            sys.argv = saved_argv
    epochs = iter(range(1, 1 << 30))

    def train(batches) -> None:
        namespace["train_loader"] = _Loader(batches)
        with quiet():
            namespace["train"](next(epochs))

    model = namespace["model"]
    if not batch_norm:
        for name in ("hidden1_bn", "hidden2_bn", "output_bn"):
            setattr(model, name, nn.Identity())  # their optimiser then skips the unused BN

    def evaluate(batches) -> float:
        model.eval()
        with torch.no_grad(), quiet():
            hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
        return hits / sum(len(y) for _, y in batches)

    return Official(model, train, evaluate)


def dni_job(
    root: Path, data: Dataset, batch_size: int, context: bool = False, seed: int = 0
) -> Job:
    """One epoch of their DNI (or cDNI) MNIST MLP example on ``data``'s batches."""
    train = dni_model(root, context, batch_size).train
    batches = batch_lists(data, batch_size, seed)
    return lambda: train(batches())
