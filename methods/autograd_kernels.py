"""The ATen kernels autograd runs for our activations and task losses, called directly.

Several methods build their updates by hand instead of calling ``torch.autograd.grad`` on a
graph: altmin's code and weight gradients (:mod:`methods.altmin_gradients`), the
target-propagation family's local gradients (:mod:`methods.tp_grads`) and feedback alignment's
``f'(a)`` (:mod:`methods.feedback_alignment`). Each needs the same two pieces, and this module is
their one copy:

- per activation of :data:`methods.networks.ACTIVATIONS`, the function its module's forward
  calls (:func:`activation_function`) and the backward kernel autograd's node runs on the
  activation's *output* (:func:`activation_backward`: ``threshold_backward``,
  ``tanh_backward``, ``sigmoid_backward``; identity passes the gradient through);
- per task loss of :mod:`methods.losses`, ``d L / d output`` by the kernels autograd's nodes
  run for ``F.cross_entropy`` (``_log_softmax`` and ``nll_loss_forward`` for nll's total
  weight, then ``nll_loss_backward`` and ``_log_softmax_backward_data``) and ``F.mse_loss``
  (``mse_loss_backward``), with or without the loss's value (:func:`loss_gradient`,
  :func:`loss_and_output_grad`).

Calling the kernels autograd would call, in the same order, gives the same bits as
``torch.autograd.grad`` (``torch.equal``, float32 and float64: ``tests/test_autograd_kernels.py``,
and end to end ``tests/test_altmin.py``, ``tests/test_tp_grads.py``) without building a graph
or entering the engine. The kernels are PyTorch's (``tools/autograd/derivatives.yaml``:
``relu``/``threshold``, ``tanh``, ``sigmoid``, ``nll_loss``, ``_log_softmax``, ``mse_loss``).

ELU is not written out: its autograd kernel reads the activation's input, not its output, so it
(and any other activation) takes the caller's autograd path; :func:`has_closed_form` and
:func:`supported` say which path applies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from methods.losses import IGNORE_INDEX, CrossEntropy, Loss, MeanSquaredError

_MEAN = 1  # ATen's reduction enum value for "mean" (F.cross_entropy's and F.mse_loss's default)
_aten = torch.ops.aten
# The overloads themselves: calling an overload packet (``_aten.mm``) first resolves it.
_mse_loss = _aten.mse_loss.default
_mse_backward_functional = _aten.mse_loss_backward.default
_mse_backward_out = _aten.mse_loss_backward.grad_input
_nll_forward = _aten.nll_loss_forward.default
_nll_backward = _aten.nll_loss_backward.default

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _pass_through(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return grad


def _relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    # relu's autograd node: threshold_backward on the result, threshold 0.
    return _aten.threshold_backward.default(grad, output, 0)


# Activation module type -> (the function its forward calls, autograd's backward from
# (grad, output)). The function gives the module's values without nn.Module.__call__ (~3 us).
_ACTIVATIONS: dict[type[nn.Module], tuple[Callable[[torch.Tensor], torch.Tensor], Kernel]] = {
    nn.ReLU: (torch.relu, _relu_backward),
    nn.Tanh: (torch.tanh, _aten.tanh_backward.default),
    nn.Sigmoid: (torch.sigmoid, _aten.sigmoid_backward.default),
    nn.Identity: (_identity, _pass_through),
}


def activation_function(activation: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``activation``'s forward calls (``torch.relu`` for ``nn.ReLU()``, ...).

    Same values as calling the module, without ``nn.Module.__call__``; an in-place ReLU or any
    other activation (e.g. ELU) is returned as is.
    """
    if isinstance(activation, nn.ReLU) and activation.inplace:
        return activation
    entry = _ACTIVATIONS.get(type(activation))
    return activation if entry is None else entry[0]


def has_closed_form(activation: nn.Module | None) -> bool:
    """Whether :func:`activation_backward` handles ``activation`` (``None``: no activation).

    ReLU, tanh, sigmoid and identity: their derivatives are functions of their outputs. ELU's
    autograd kernel reads its input instead, so ELU takes the autograd path. An in-place ReLU
    counts (its output is the same); :func:`supported` is the stricter test for callers that
    run :func:`activation_function` on a tensor they still need.
    """
    return activation is None or type(activation) in _ACTIVATIONS


def backward_from_output(activation: nn.Module) -> Kernel:
    """``(grad, output) -> grad * act'(z)`` for ``output = act(z)``, looked up once.

    The kernel :func:`activation_backward` calls, for a caller that applies it many times
    (shapes as there).

    Raises:
        KeyError: for an activation without :func:`has_closed_form` (or ``None``).
    """
    return _ACTIVATIONS[type(activation)][1]


def activation_backward(
    activation: nn.Module | None, grad: torch.Tensor, output: torch.Tensor
) -> torch.Tensor:
    """``grad * act'(z)`` from ``output = act(z)``: ``(batch, n) -> (batch, n)``.

    Args:
        activation: an ``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid`` or ``nn.Identity`` module, or
            ``None`` for a linear layer.
        grad: the gradient with respect to ``output``.
        output: the activation's output.

    Raises:
        TypeError: for another activation (check :func:`has_closed_form` first).
    """
    if activation is None:
        return grad
    entry = _ACTIVATIONS.get(type(activation))
    if entry is None:
        raise TypeError(f"no closed-form backward for {type(activation).__name__}")
    return entry[1](grad, output)


def mse_backward(
    grad: torch.Tensor, output: torch.Tensor, target: torch.Tensor, zero_fill: bool = False
) -> torch.Tensor:
    """``d mse(output, target) / d output`` times ``grad`` (a 0-d seed), shaped like ``output``.

    ``F.mse_loss``'s mean over all elements; ``target`` shaped like ``output``. ATen's
    functional ``mse_loss_backward`` (``zero_fill=True``, what :func:`loss_and_output_grad`
    runs) zero-fills its result before the kernel overwrites every element; the ``out=`` form
    into an empty tensor (the default, altmin's code steps) is the same kernel without the fill.
    Both give the same bits; each caller keeps the form it has always run.
    """
    if zero_fill:
        return _mse_backward_functional(grad, output, target, _MEAN)
    result = torch.empty_like(output, memory_format=torch.contiguous_format)
    return _mse_backward_out(grad, output, target, _MEAN, grad_input=result)


def log_softmax(output: torch.Tensor) -> torch.Tensor:
    """``log_softmax(output, 1)`` ``(batch, classes)``, the kernel ``F.cross_entropy`` runs."""
    return torch._log_softmax(output, 1, False)


def nll_forward(log_probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(nll, total_weight)``: ``nll_loss``'s batch mean (0-d) and the count it divides by.

    ``log_probs`` ``(batch, classes)``, ``target`` class indices ``(batch,)``; targets equal to
    :data:`methods.losses.IGNORE_INDEX` are not scored. The total weight is a function of
    ``target`` only, and :func:`cross_entropy_from_log_probs` needs it.
    """
    return _nll_forward(log_probs, target, None, _MEAN, IGNORE_INDEX)


def cross_entropy_from_log_probs(
    grad: torch.Tensor, log_probs: torch.Tensor, target: torch.Tensor, total_weight: torch.Tensor
) -> torch.Tensor:
    """``d CE / d output`` times ``grad`` (0-d), ``(batch, classes)``, from ``log_softmax(output)``.

    ``F.cross_entropy`` is ``log_softmax`` then ``nll_loss`` (ATen's ``cross_entropy_loss``);
    these are their autograd nodes' kernels in order. ``total_weight`` from :func:`nll_forward`.
    """
    grad = _nll_backward(grad, log_probs, target, None, _MEAN, IGNORE_INDEX, total_weight)
    return torch._log_softmax_backward_data(grad, log_probs, 1, log_probs.dtype)


def _cross_entropy(
    grad: torch.Tensor, output: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CE, grad * d CE / d output)`` of logits ``(batch, classes)`` and indices ``(batch,)``."""
    log_probs = log_softmax(output)
    value, total_weight = nll_forward(log_probs, target)
    return value, cross_entropy_from_log_probs(grad, log_probs, target, total_weight)


def _cross_entropy_backward(
    grad: torch.Tensor, output: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    return _cross_entropy(grad, output, target)[1]


# Loss type -> d loss / d output, from (grad of the loss (0-d), output (batch, outputs), target).
_LOSS_BACKWARD: dict[type[Loss], LossKernel] = {
    CrossEntropy: _cross_entropy_backward,
    MeanSquaredError: mse_backward,
}


def supported(activation: nn.Module, loss: Loss) -> bool:
    """Whether ``activation``'s and ``loss``'s gradients are both written out here.

    For callers that run :func:`activation_function` on a tensor they still need (altmin's
    codes): an in-place ReLU is excluded, as its function is the module itself, which would
    overwrite its input. The loss must be exactly :class:`~methods.losses.CrossEntropy` or
    :class:`~methods.losses.MeanSquaredError` (a subclass may change the loss).
    """
    plain_relu = not isinstance(activation, nn.ReLU) or not activation.inplace
    return type(activation) in _ACTIVATIONS and plain_relu and type(loss) in _LOSS_BACKWARD


def loss_backward(loss: Loss) -> LossKernel:
    """``(grad, output, target) -> grad * dL/d output`` for a loss of :func:`supported`.

    Looked up once, for a caller that applies it many times: ``grad`` is 0-d, ``output``
    ``(batch, outputs)``, ``target`` class indices ``(batch,)`` for cross-entropy or shaped
    like ``output`` for MSE (the ``out=`` form of :func:`mse_backward`).

    Raises:
        KeyError: for another loss type.
    """
    return _LOSS_BACKWARD[type(loss)]


def loss_gradient(loss: Loss, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d L(output, target) / d output`` ``(batch, outputs)`` for a loss of :func:`supported`.

    Targets as in :func:`loss_backward`; the loss's value is not computed (cross-entropy's
    ``nll_loss_forward`` runs for its total weight only).

    Raises:
        KeyError: for another loss type.
    """
    one = torch.ones((), dtype=output.dtype, device=output.device)
    return _LOSS_BACKWARD[type(loss)](one, output, target)


def mse_gradient(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d mse(output, target) / d output`` (``F.mse_loss``, mean over all elements).

    ``output`` and ``target`` ``(batch, n)``; the ``out=`` form of :func:`mse_backward`.
    """
    return mse_backward(torch.ones((), dtype=output.dtype, device=output.device), output, target)


def loss_and_output_grad(
    loss: Loss, output: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(L, dL/d output)`` without autograd, or ``None`` where not written out here.

    ``output`` ``(batch, outputs)``. For :class:`~methods.losses.CrossEntropy` with class
    indices ``(batch,)`` and :class:`~methods.losses.MeanSquaredError` with a target shaped like
    ``output``, it runs the kernels ``F.cross_entropy`` / ``F.mse_loss`` run (``_log_softmax``
    then ``nll_loss_forward``; ``mse_loss``) and those autograd's nodes run for
    ``torch.autograd.grad(L, output)`` (``nll_loss_backward`` then
    ``_log_softmax_backward_data``; ``mse_loss_backward``, functional form) on a gradient of
    ones, so both results are the same bits as ``loss(output, target)`` and autograd's gradient
    (``tests/test_autograd_kernels.py``). ``L`` is a 0-d tensor. Other losses and shapes
    (per-step outputs, subclasses, class probabilities): ``None``, and the caller uses autograd.
    """
    if type(loss) is CrossEntropy and output.ndim == 2 and target.ndim == 1:
        if target.is_floating_point():  # class probabilities: autograd
            return None
        one = torch.ones((), dtype=output.dtype, device=output.device)
        return _cross_entropy(one, output, target)
    if type(loss) is MeanSquaredError and (output.shape, output.dtype) == (
        target.shape,
        target.dtype,
    ):
        one = torch.ones((), dtype=output.dtype, device=output.device)
        value = _mse_loss(output, target, _MEAN)
        return value, mse_backward(one, output, target, zero_fill=True)
    return None
