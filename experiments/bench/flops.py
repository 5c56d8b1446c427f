"""Matrix-product FLOPs of one training step, counted exactly: the floor a learning rule sets.

A method whose update needs ``k`` times backprop's matrix products cannot, on the same BLAS,
run an epoch in much less than ``k`` times backprop's time. :func:`step_flops` counts them for
one :meth:`~methods.Method.step` on one batch, after one uncounted warm-up step (so lazily built
state, such as optimiser moments or DTP's first inverse, is there, as in a run's later steps).

What is counted: every ATen call that torch's own FLOP formulas
(:data:`torch.utils.flop_counter.flop_registry`) know, seen at the dispatcher below autograd, so
forward *and* backward calls, those of ``loss.backward()`` as well as those of
``torch.autograd.grad``: ``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution`` and
``convolution_backward`` (only the input and weight gradients actually asked for: the first
layer's input gradient is not computed, hence not counted), the attention kernels. A
multiply-add is 2 FLOPs (the registry's convention).

What is not: matrix-vector and dot products (``mv``, ``dot``), LAPACK factorisations and solves
(HSIC's Cholesky, any ``linalg`` call), elementwise work (activations, biases, losses,
kernels' exponentials), reductions, the optimiser, and anything computed outside torch (NumPy).
So a method's count divided by backprop's is a lower bound on the method's *work*, in units of
backprop's matrix-product work, and the ratio the time ratio tends to when both steps are
dominated by matrix products (wide layers, large batches). It is not a bound on the time ratio:
that falls below it when backprop's own step is mostly other work (small layers, the loop's
bookkeeping, evaluation: on MNIST-1D's 256-wide MLP DNI's epoch takes about 20x backprop's
against a floor of 41x), and above it when the method's uncounted work dominates. It is per
training step; the benchmark's time ratios are per epoch, which also evaluates the test split
(on MNIST-1D about 3.5% of backprop's epoch FLOPs), so the epoch's own ratio is slightly lower.

``torch.utils.flop_counter.FlopCounterMode`` itself cannot be used: its module tracker registers
backward hooks on the modules' inputs, which makes ``torch.autograd.grad`` (used by DTP, DRL,
HSIC, ...) fail with "A leaf node was passed to _will_engine_execute_node". The plain
dispatch mode here does the same sum without the hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from methods import Method


class CountFlops(TorchDispatchMode):
    """Sums :data:`~torch.utils.flop_counter.flop_registry`'s FLOPs of every call made inside.

    Use as ``with CountFlops() as counter: ...``, then read :attr:`total` and :attr:`by_op`.

    Attributes:
        total: FLOPs (a multiply-add is 2) of the counted calls so far.
        by_op: ATen operator name (e.g. ``"aten.mm"``) -> its FLOPs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.total += flops
            name = str(func._overloadpacket)
            self.by_op[name] = self.by_op.get(name, 0) + flops
        return out


def step_flops(method: Method, x: torch.Tensor, y: torch.Tensor, warmup: int = 1) -> int:
    """Matrix-product FLOPs of one ``method.step(x, y)``, after ``warmup`` uncounted steps.

    The steps train ``method`` (its weights and state change): count on a method built for
    counting, not on one being timed or trained.

    Args:
        method: the learning rule, built on its model.
        x: one batch of inputs, e.g. ``(batch, features)`` or ``(batch, channels, h, w)``.
        y: its targets, ``(batch,)`` class indices or ``(batch, outputs)``.
        warmup: steps run first, not counted.

    Returns:
        FLOPs of the counted step (a multiply-add is 2; see the module docstring for what is
        counted).
    """
    for _ in range(warmup):
        method.step(x, y)
    with CountFlops() as counter:
        method.step(x, y)
    return counter.total
