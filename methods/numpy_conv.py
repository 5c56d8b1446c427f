"""A from-scratch NumPy backpropagation for the CNN, the reference ``numpy_backprop`` uses there.

It mirrors :class:`methods.networks.CNN` layer by layer, in float64, with torch's layouts (conv
kernels ``(C_out, C_in, k, k)``, linear weights ``(out, in)``), so parameters are copied without
transposes. Every piece is written out by hand (no autograd):

* convolution (cross-correlation, stride 1, zero padding ``p``) as a matrix product over image
  patches ("im2col", Chellapilla, Puri & Simard 2006)::

      a[n, o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] x_pad[n, c, i + u, j + v]
      dW = sum over (n, i, j) of delta[n, :, i, j] (outer) patch[n, i, j]
      dx_pad[n, c, i + u, j + v] += sum_o W[o, c, u, v] delta[n, o, i, j]   ("col2im")

* max pooling: the gradient goes to the (first) maximum of each window; average pooling
  (torch's ``count_include_pad=True``): ``1 / k^2`` of it to every input of the window;
* activations ``relu``, ``elu`` (alpha 1), ``tanh``, ``sigmoid``, ``identity``; the linear layers
  and losses as :class:`methods.numpy_reference.NumpyMLP`'s (cross-entropy on a softmax output:
  ``delta_L = (softmax(a_L) - onehot) / batch``; ``mse``: ``2 (y - d) / d.size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from methods.numpy_reference import _activate, _derivative

ACTIVATIONS = ("relu", "elu", "tanh", "sigmoid", "identity")


def activate(name: str, a: np.ndarray) -> np.ndarray:
    """``f(a)`` elementwise for a name of :data:`ACTIVATIONS`."""
    if name == "elu":
        return np.where(a > 0, a, np.expm1(np.minimum(a, 0.0)))
    return _activate(name, a)


def derivative(name: str, a: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``f'(a)`` elementwise, using ``h = f(a)`` (ELU: ``h + 1`` where ``a <= 0``)."""
    if name == "elu":
        return np.where(a > 0, 1.0, h + 1.0)
    return _derivative(name, a, h)


def patches(x: np.ndarray, kernel: int, padding: int) -> np.ndarray:
    """Image patches ``(N, H_out, W_out, C * kernel^2)`` of ``x`` ``(N, C, H, W)``, stride 1."""
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (kernel, kernel), axis=(2, 3))  # N, C, Ho, Wo, k, k
    n, c, ho, wo = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho, wo, c * kernel * kernel)


def conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, padding: int) -> np.ndarray:
    """``a`` ``(N, C_out, H_out, W_out)`` of ``x`` ``(N, C_in, H, W)`` with ``w``, ``b``."""
    cols = patches(x, w.shape[2], padding)
    return (cols @ w.reshape(w.shape[0], -1).T + b).transpose(0, 3, 1, 2)


def conv_backward(
    x: np.ndarray, w: np.ndarray, padding: int, delta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dL/dw, dL/db, dL/dx)`` from ``delta = dL/da`` ``(N, C_out, H_out, W_out)``."""
    k = w.shape[2]
    cols = patches(x, k, padding)
    d = delta.transpose(0, 2, 3, 1)  # N, Ho, Wo, C_out
    grad_w = (d.reshape(-1, w.shape[0]).T @ cols.reshape(-1, cols.shape[-1])).reshape(w.shape)
    grad_b = d.sum(axis=(0, 1, 2))
    dcols = (d @ w.reshape(w.shape[0], -1)).reshape(*d.shape[:3], x.shape[1], k, k)
    n, c, height, width = x.shape
    ho, wo = d.shape[1:3]
    dpad = np.zeros((n, c, height + 2 * padding, width + 2 * padding))
    for u in range(k):
        for v in range(k):
            dpad[:, :, u : u + ho, v : v + wo] += dcols[..., u, v].transpose(0, 3, 1, 2)
    return grad_w, grad_b, dpad[:, :, padding : padding + height, padding : padding + width]


def _pool_windows(
    h: np.ndarray, size: int, stride: int, padding: int, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    padded = np.pad(
        h, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=fill
    )
    windows = sliding_window_view(padded, (size, size), axis=(2, 3))[:, :, ::stride, ::stride]
    return padded, windows  # windows: N, C, Ho, Wo, size, size


def pool_forward(h: np.ndarray, kind: str, size: int, stride: int, padding: int) -> np.ndarray:
    """Max or average pooling of ``h`` ``(N, C, H, W)`` (floor mode, torch's padding rules)."""
    if kind == "none":
        return h
    fill = -np.inf if kind == "max" else 0.0
    _, windows = _pool_windows(h, size, stride, padding, fill)
    return windows.max(axis=(4, 5)) if kind == "max" else windows.mean(axis=(4, 5))


def pool_backward(
    h: np.ndarray, kind: str, size: int, stride: int, padding: int, grad: np.ndarray
) -> np.ndarray:
    """``dL/dh`` from ``grad = dL/d pool(h)``: to each window's first maximum, or spread."""
    if kind == "none":
        return grad
    fill = -np.inf if kind == "max" else 0.0
    padded, windows = _pool_windows(h, size, stride, padding, fill)
    ho, wo = grad.shape[2:]
    if kind == "max":
        flat = windows.reshape(*windows.shape[:4], size * size)
        winner = flat.argmax(axis=-1)  # the first maximum, as torch's CPU kernel keeps
    dpad = np.zeros_like(padded)
    for u in range(size):
        for v in range(size):
            share = grad * (winner == u * size + v) if kind == "max" else grad / size**2
            rows = slice(u, u + stride * (ho - 1) + 1, stride)
            cols = slice(v, v + stride * (wo - 1) + 1, stride)
            dpad[:, :, rows, cols] += share
    height, width = h.shape[2:]
    return dpad[:, :, padding : padding + height, padding : padding + width]


@dataclass(frozen=True)
class ConvSpec:
    """One conv block's hyperparameters (stride-1 convolution, then activation, then pooling)."""

    padding: int
    pool: str
    pool_size: int
    pool_stride: int
    pool_padding: int


class NumpyCNN:
    """Conv blocks, then linear layers, trained by hand-written backprop (module docstring).

    Args:
        convs: the conv blocks' :class:`ConvSpec`, in order.
        activation: hidden activation, one of :data:`ACTIVATIONS`.
        loss: ``cross_entropy`` (softmax output) or ``mse`` (linear output).

    Attributes:
        weights: conv kernels ``(C_out, C_in, k, k)``, then linear ``(out, in)``, float64.
        biases: ``(C_out,)`` / ``(out,)`` float64; set both before :meth:`backward`.

    Raises:
        ValueError: for an unknown activation, pooling or loss.
    """

    def __init__(self, convs: Sequence[ConvSpec], activation: str, loss: str) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"loss must be cross_entropy or mse, got {loss!r}")
        if any(spec.pool not in ("max", "avg", "none") for spec in convs):
            raise ValueError("pool must be max, avg or none")
        self.convs, self.activation, self.loss_name = list(convs), activation, loss
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """``(inputs, pre-activations, activations)`` of every layer for ``x`` ``(N, C, H, W)``.

        ``inputs[l]`` is layer ``l``'s input (pooled output of the layer below), ``pre[l]`` its
        ``a_l``, ``post[l]`` its ``f(a_l)`` before pooling; the last ``post`` is the logits.
        """
        inputs, pre, post = [], [], []
        h = np.asarray(x, dtype=np.float64)
        last = len(self.weights) - 1
        for index, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            if index < len(self.convs):
                spec = self.convs[index]
                a = conv_forward(h, w, b, spec.padding)
                f = activate(self.activation, a)
                h = pool_forward(f, spec.pool, spec.pool_size, spec.pool_stride, spec.pool_padding)
            else:
                a = h.reshape(len(h), -1) @ w.T + b
                f = a if index == last else activate(self.activation, a)
                h = f
            pre.append(a)
            post.append(f)
        return inputs, pre, post

    def backward(self, x: np.ndarray, d: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gradients of the batch-mean loss for every weight and bias (shaped like them).

        Args:
            x: ``(N, C, H, W)`` images.
            d: ``(N,)`` class indices (cross-entropy) or ``(N, outputs)`` targets (mse).
        """
        inputs, pre, post = self.forward(x)
        logits = post[-1]
        if self.loss_name == "cross_entropy":
            d = np.asarray(d).reshape(-1)
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            delta = shifted / shifted.sum(axis=1, keepdims=True)
            delta[np.arange(len(d)), d] -= 1.0
            delta /= len(d)
        else:
            d = np.asarray(d, dtype=np.float64).reshape(logits.shape)
            delta = 2.0 * (logits - d) / d.size
        count = len(self.weights)
        grad_w: list[np.ndarray] = [np.empty(0)] * count
        grad_b: list[np.ndarray] = [np.empty(0)] * count
        for index in range(count - 1, -1, -1):
            w, h_in = self.weights[index], inputs[index]
            if index < len(self.convs):
                grad_w[index], grad_b[index], grad_in = conv_backward(
                    h_in, w, self.convs[index].padding, delta
                )
            else:
                flat = h_in.reshape(len(h_in), -1)
                grad_w[index], grad_b[index] = delta.T @ flat, delta.sum(axis=0)
                grad_in = (delta @ w).reshape(h_in.shape)
            if index == 0:
                break
            # Back through the layer below: its pooling (conv blocks), then its activation.
            below = index - 1
            if below < len(self.convs):
                spec = self.convs[below]
                grad_in = pool_backward(
                    post[below],
                    spec.pool,
                    spec.pool_size,
                    spec.pool_stride,
                    spec.pool_padding,
                    grad_in,
                )
            delta = grad_in * derivative(self.activation, pre[below], post[below])
        return grad_w, grad_b
