"""The benchmark's cases: which jobs are compared, on which shapes, for how many rounds.

A case builds its jobs only when it is run (:attr:`Case.build`), so only one case's models live
in memory at a time. Shapes are those of issue 16; ``quick`` shrinks every width and dataset to
a few batches (for the test suite and CI: it checks that every case runs, not its figures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from experiments.bench import flops, jobs
from experiments.bench.timing import Job
from experiments.data import Dataset

GROUPS = {"a": "harness", "b": "methods", "c": "flops", "d": "official", "e": "official-code"}

MLP_METHODS = ("backprop", "dtp", "drl", "hsic", "altmin", "dni", "cdni", "fa", "dfa")
NUMPY_METHODS = ("numpy_backprop",)
RNN_METHODS = ("bptt", "tbptt", "dni_rnn")
# Every method that trains model=cnn (altmin and numpy_backprop refuse it, with the reason).
CNN_METHODS = ("backprop", "fa", "dfa", "dni", "cdni", "hsic", "dtp", "drl", "ldrl")


@dataclass
class Comparison:
    """Jobs timed together, each reported against ``reference``.

    Attributes:
        jobs: name -> job, in the order of the first round.
        reference: the job every other is divided by.
        flops: FLOPs per call for jobs compared by FLOP/s instead of time: the reported value
            of such a job is ``(flops[job] / t_job) / (flops[reference] / t_reference)``.
        step_flops: job -> a callable counting the matrix-product FLOPs of one training step
            of that job's method (:func:`count_step`), for the FLOP floor reported beside a
            time ratio; called once, before the timed rounds, only for the jobs timed. Jobs
            without one (the harness, the official code) get no floor.
    """

    jobs: dict[str, Job]
    reference: str
    flops: dict[str, float] = field(default_factory=dict)
    step_flops: dict[str, Callable[[], int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One row group of the table.

    Attributes:
        group: ``harness``, ``methods``, ``flops``, ``official`` or ``official-code``.
        name: what was measured, with its shapes (e.g. ``mnist1d 40-256-256-10 b100``).
        rounds: default number of timed rounds (``--rounds`` overrides it).
        build: makes the :class:`Comparison` (models, data) when the case is run.
        methods: the first word of each compared job's name (``harness``, ``training``, or a
            method), so ``--methods`` can skip a case without building it.
    """

    group: str
    name: str
    rounds: int
    build: Callable[[], Comparison]
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shapes:
    """A dataset's shapes for one case: example shape, sizes, hidden widths and batch size."""

    data: str
    input_shape: tuple[int, ...]
    n_train: int
    n_test: int
    hidden: tuple[int, ...]
    batch: int

    def dataset(self) -> Dataset:
        """Random data of these shapes (:func:`jobs.random_dataset`)."""
        return jobs.random_dataset(self.data, self.input_shape, self.n_train, self.n_test)

    def label(self, model: str = "mlp", extra: str = "") -> str:
        """E.g. ``mnist1d 40-256-256-10 b100 (4000 ex)``."""
        width = 1
        for d in self.input_shape:
            width *= d
        layers = "-".join(str(s) for s in (width, *self.hidden, 10)) if model == "mlp" else model
        return f"{self.data} {layers}{extra} b{self.batch} ({self.n_train} ex)"


def count_step(cfg: DictConfig, data: Dataset, batch: int) -> Callable[[], int]:
    """A counter of one training step's matrix-product FLOPs for the method of ``cfg``.

    When called, it builds a second copy of the method (same config and seed as the timed
    one, which it leaves untouched), and returns :func:`flops.step_flops` on the first
    ``batch`` training examples of ``data``.
    """

    def count() -> int:
        method = jobs.build_from_config(cfg, data)
        return flops.step_flops(method, data.x_train[:batch], data.y_train[:batch])

    return count


def _overrides(shapes: Shapes, method: str, model: str = "mlp", *extra: str) -> list[str]:
    hidden = ",".join(str(s) for s in shapes.hidden)
    items = [f"method={method}", f"data={shapes.data}", f"train.batch_size={shapes.batch}"]
    if model == "mlp":
        items.append(f"model.hidden_sizes=[{hidden}]")
    else:
        items.append(f"model={model}")
    return [*items, *extra]


def harness_case(shapes: Shapes, rounds: int) -> Case:
    """Group ``harness``: ``fit`` with ``method=backprop`` against :func:`jobs.bare_epoch`."""

    def build() -> Comparison:
        data = shapes.dataset()
        cfg = jobs.compose_config(_overrides(shapes, "backprop"))
        method = jobs.build_from_config(cfg, data)
        model = jobs.bare_twin(method, cfg, data)
        eval_batch = cfg.train.eval_batch_size
        return Comparison(
            jobs={
                "bare torch loop": jobs.bare_epoch(
                    model, jobs.bare_optimizer(model, cfg), data, shapes.batch, eval_batch
                ),
                "harness (fit, backprop)": jobs.harness_epoch(
                    method, data, shapes.batch, eval_batch
                ),
            },
            reference="bare torch loop",
        )

    return Case("harness", shapes.label(), rounds, build, ("harness",))


def methods_case(
    shapes: Shapes,
    methods: Sequence[str],
    reference: str,
    rounds: int,
    model: str = "mlp",
    extra: Sequence[str] = (),
    label: str = "",
    group: str = "methods",
) -> Case:
    """Each method's harness epoch against ``reference``'s, same data, batches and network.

    Every method is composed from the configs with ``extra`` overrides, as a run would be.
    Each gets a FLOP counter (:func:`count_step`) but the NumPy ones (:data:`NUMPY_METHODS`),
    whose updates torch does not see.
    """

    def build() -> Comparison:
        data = shapes.dataset()
        built, counters = {}, {}
        for name in methods:
            cfg = jobs.compose_config(_overrides(shapes, name, model, *extra))
            method = jobs.build_from_config(cfg, data)
            built[name] = jobs.harness_epoch(method, data, shapes.batch, cfg.train.eval_batch_size)
            if name not in NUMPY_METHODS:  # NumPy's products are invisible to torch's dispatcher
                counters[name] = count_step(cfg, data, shapes.batch)
        return Comparison(jobs=built, reference=reference, step_flops=counters)

    return Case(group, shapes.label(model, label), rounds, build, tuple(methods))


def flops_case(shapes: Shapes, gemm: int, rounds: int) -> Case:
    """The wide net's training step (backprop, Adam) by FLOP/s, against a square GEMM's."""

    def build() -> Comparison:
        data = shapes.dataset()
        cfg = jobs.compose_config(_overrides(shapes, "backprop"))
        method = jobs.build_from_config(cfg, data)
        x, y = data.x_train[: shapes.batch], data.y_train[: shapes.batch]
        width = 1
        for d in shapes.input_shape:
            width *= d
        step_flops = jobs.mlp_step_flops([width, *shapes.hidden, 10], shapes.batch)
        gemm_run, gemm_flops = jobs.gemm_job(gemm)
        name = f"matmul {gemm}x{gemm}"
        return Comparison(
            jobs={name: gemm_run, "training step": jobs.step_job(method, x, y)},
            reference=name,
            flops={name: gemm_flops, "training step": step_flops},
        )

    return Case("flops", shapes.label(), rounds, build, ("training",))


def all_cases(quick: bool = False, official_root: Path | None = None) -> list[Case]:
    """Every case of the benchmark, in table order; ``quick``: tiny shapes, 3 rounds.

    The ``official-code`` cases come last, only with ``official_root`` (the folder holding the
    official checkouts, :mod:`experiments.bench.official`), and only those whose checkout is
    there.
    """
    rounds = (lambda _: 3) if quick else (lambda default: default)
    cases = list(_cases(tiny=quick, rounds=rounds))
    if official_root is not None:
        cases += official_code_cases(Path(official_root), quick, rounds)
    return cases


def ours_against_theirs_case(
    shapes: Shapes,
    method: str,
    extra: Sequence[str],
    theirs: Callable[[object], Job],
    label: str,
    rounds: int,
    tag: str = "",
) -> Case:
    """Group ``official-code``: our ``method``'s train-only epoch against an official one.

    Both sides run one training epoch over the same batches (same seeded permutation) and
    evaluate nothing: ours is :func:`jobs.train_epoch` of the method composed as a run would be
    (with ``extra`` overrides), theirs is ``theirs(data)`` (a job from
    :mod:`experiments.bench.official`). The row's value is ours / theirs.

    Args:
        shapes: the official shapes (random data of them).
        method: our method's name (the row's job).
        extra: config overrides, e.g. ``["model.activation=tanh"]``.
        theirs: builds the official epoch on the case's data.
        label: the reference's name, e.g. ``official IBM/online-alt-min@ef31aaa``.
        rounds: timed rounds.
        tag: appended to the case's shapes (e.g. ``, float64``).
    """

    def build() -> Comparison:
        data = shapes.dataset()
        cfg = jobs.compose_config(_overrides(shapes, method, "mlp", *extra))
        ours = jobs.train_epoch(jobs.build_from_config(cfg, data), data, shapes.batch)
        return Comparison(jobs={label: theirs(data), method: ours}, reference=label)

    name = f"{method}: {shapes.label(extra=tag)}, train only"
    return Case("official-code", name, rounds, build, (method,))


def official_code_cases(
    root: Path, tiny: bool, rounds: Callable[[int], int] = lambda default: default
) -> list[Case]:
    """Our methods against the official code on its shapes (see :mod:`.official`).

    Only the checkouts present under ``root`` give cases (:func:`official.missing` names the
    others). ``tiny`` shrinks widths to at most 32 and the data to two batches.
    """
    from experiments.bench import official

    def mlp(hidden, batch) -> Shapes:
        if tiny:
            hidden, batch = tuple(min(h, 32) for h in hidden), min(batch, 64)
        n_train = (2 if tiny else 10) * batch
        return Shapes("fashion_mnist", (28, 28), n_train, n_train // 10, tuple(hidden), batch)

    def present(key: str) -> bool:
        return (root / official.CHECKOUTS[key].folder).is_dir()

    cases = []
    label = {key: spec.label for key, spec in official.CHECKOUTS.items()}
    if present("hsic"):
        hsic = mlp((1024,) * 6, 256)
        width, n_layers = hsic.hidden[0], len(hsic.hidden) - 1
        cases.append(
            ours_against_theirs_case(
                hsic,
                "hsic",
                (),
                lambda data: official.hsic_job(root, data, hsic.batch, width, n_layers),
                label["hsic"],
                rounds(9),
            )
        )
    if present("altmin"):
        for width in (100, 500):
            shapes = mlp((width, width), 200)
            cases.append(
                ours_against_theirs_case(
                    shapes,
                    "altmin",
                    (),
                    lambda data, s=shapes: official.altmin_job(root, data, s.batch, s.hidden[0]),
                    label["altmin"],
                    rounds(9),
                )
            )
    if present("dtp"):
        dtp = mlp((256,) * 5, 128)
        sizes = {"size_hidden": dtp.hidden[0], "num_hidden": len(dtp.hidden)}
        for double in (True, False):
            cases.append(
                ours_against_theirs_case(
                    dtp,
                    "dtp",
                    ("model.activation=tanh", "model.init=orthogonal"),
                    lambda data, d=double: official.dtp_job(root, data, dtp.batch, d, **sizes),
                    label["dtp"] + (" float64 (their default)" if double else " float32"),
                    rounds(9),
                    ", tanh",
                )
            )
    if present("dni"):
        dni = mlp((256, 256), 64)
        synthesiser = f"method.hidden_sizes=[{min(256, dni.hidden[0])}]"
        # Their one BackwardInterface sits after the last hidden layer: so does our one module.
        cut = f"method.interfaces=[{len(dni.hidden)}]"
        for method in ("dni", "cdni"):
            cases.append(
                ours_against_theirs_case(
                    dni,
                    method,
                    (synthesiser, cut),
                    lambda data, c=(method == "cdni"): official.dni_job(root, data, dni.batch, c),
                    label["dni"] + (" --context" if method == "cdni" else ""),
                    rounds(9),
                    ", synthesiser 256 after layer 2",
                )
            )
    return cases


def _cases(tiny: bool, rounds: Callable[[int], int]) -> Iterator[Case]:
    def mlp(data, shape, n_train, hidden, batch) -> Shapes:
        if tiny:  # two batches of at most 100 examples, widths of at most 32
            hidden = tuple(min(h, 32) for h in hidden)
            batch = min(batch, 100)
            n_train = 2 * batch
        return Shapes(data, shape, n_train, max(n_train // 10, 1), tuple(hidden), batch)

    mnist1d = mlp("mnist1d", (40,), 4000, (256, 256), 100)
    fashion = mlp("fashion_mnist", (28, 28), 3000, (256, 256), 100)
    wide = mlp("fashion_mnist", (28, 28), 2048, (2048,) * 4, 1024)
    seq = Shapes("mnist1d_seq", (40, 1), 200 if tiny else 2000, 20 if tiny else 200, (), 100)

    yield harness_case(mnist1d, rounds(30))
    yield harness_case(fashion, rounds(15))
    yield harness_case(wide, rounds(5))

    for shapes, n in ((mnist1d, 15), (fashion, 5)):
        yield methods_case(shapes, MLP_METHODS + NUMPY_METHODS, "backprop", rounds(n))
    yield methods_case(seq, RNN_METHODS, "bptt", rounds(7), model="rnn")
    # The LeNet-like net (conf/model/cnn.yaml) on Fashion-MNIST images, as in cnn_compare.
    images = Shapes(
        "fashion_mnist",
        (1, 28, 28),
        60 if tiny else 1000,
        10 if tiny else 100,
        (),
        20 if tiny else 100,
    )
    narrow = ("model.channels=[4,8]", "model.hidden_sizes=[16]") if tiny else ()
    yield methods_case(images, CNN_METHODS, "backprop", rounds(5), model="cnn", extra=narrow)

    yield flops_case(wide, 64 if tiny else 2048, rounds(7))

    official = [
        ("hsic", ("backprop", "hsic"), (1024,) * 6, 256, ()),
        ("altmin", ("backprop", "altmin"), (100, 100), 200, ()),
        ("altmin", ("backprop", "altmin"), (500, 500), 200, ()),
        (
            "dtp",
            ("backprop", "dtp"),
            (256,) * 5,
            128,
            ("model.activation=tanh", "model.init=orthogonal"),
        ),
        (
            "dni",
            ("backprop", "dni", "cdni"),
            (256, 256),
            64,
            # koz4k/dni-pytorch's synthesiser size, and its one interface after hidden layer 2
            ("method.hidden_sizes=[256]", "method.interfaces=[2]"),
        ),
    ]
    for what, methods, hidden, batch, extra in official:
        # 30 batches, as many as the other cases: a real epoch has hundreds, so a method's
        # per-epoch work (DNI's cosine probe: about one extra step) must not weigh like 10%.
        shapes = mlp("fashion_mnist", (28, 28), 30 * batch, hidden, batch)
        yield _official_case(shapes, methods, extra, rounds(5), what)


def _official_case(
    shapes: Shapes, methods: Sequence[str], extra: Sequence[str], rounds: int, what: str
) -> Case:
    model_extra = [e for e in extra if e.startswith("model.")]
    method_extra = [e for e in extra if e.startswith("method.")]

    def build() -> Comparison:
        data = shapes.dataset()
        built, counters = {}, {}
        for name in methods:
            # method.* overrides are for the compared method: backprop has no such options, and
            # cdni keeps its default linear modules (the paper's for cDNI), not their size.
            own = [
                e
                for e in method_extra
                if name != "backprop" and not (name == "cdni" and "hidden_sizes" in e)
            ]
            cfg = jobs.compose_config(_overrides(shapes, name, "mlp", *model_extra, *own))
            method = jobs.build_from_config(cfg, data)
            job = f"{name} (linear)" if name == "cdni" else name
            built[job] = jobs.harness_epoch(method, data, shapes.batch, cfg.train.eval_batch_size)
            counters[job] = count_step(cfg, data, shapes.batch)
        return Comparison(jobs=built, reference="backprop", step_flops=counters)

    tag = ", synthesiser 256 after layer 2" if what == "dni" else ""
    tag += ", tanh" if what == "dtp" else ""
    return Case("official", f"{what}: {shapes.label(extra=tag)}", rounds, build, tuple(methods))
