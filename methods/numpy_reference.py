"""A from-scratch NumPy backpropagation network, the reference the torch methods are checked with.

The architecture is given like the seed article's ``net_arch``: a list of hidden-layer widths
(possibly empty, which gives a single neuron layer such as the article's worked example).
Weights follow torch's layout, ``W_l`` of shape ``(out_features, in_features)``, so parameters
can be copied to and from ``torch.nn.Linear`` without transposes.

Backpropagation (Rumelhart, Hinton & Williams 1986), for a batch of ``m`` rows::

    a_l = h_{l-1} W_l^T + b_l,    h_l = f_l(a_l),    h_0 = x
    delta_L = dE/da_L                       (output layer, from the loss)
    delta_l = (delta_{l+1} W_{l+1}) * f_l'(a_l)
    dE/dW_l = delta_l^T h_{l-1},  dE/db_l = sum_rows delta_l

Losses, all averaged over the batch:

* ``squared_error``: ``E = 1/2 sum_k (d_k - y_k)^2`` per sample, the article's worked example;
* ``mse``: ``mean_{n,k} (d_nk - y_nk)^2``, torch's ``F.mse_loss``;
* ``cross_entropy``: ``-log softmax(a_L)[d]`` per sample (requires ``output_activation
  ="softmax"``, whose derivative is folded into ``delta_L = softmax(a_L) - onehot(d)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HIDDEN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity")
OUTPUT_ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity", "softmax")
LOSSES = ("squared_error", "mse", "cross_entropy")


def _activate(name: str, a: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-a))
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.maximum(a, 0.0)
    if name == "softmax":
        shifted = np.exp(a - a.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return a


def _derivative(name: str, a: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Elementwise ``f'(a)``, using the already computed ``h = f(a)`` where cheaper."""
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "tanh":
        return 1.0 - h**2
    if name == "relu":
        return (a > 0).astype(a.dtype)
    return np.ones_like(a)


class NumpyMLP:
    """Fully connected network trained by hand-written backpropagation.

    Args:
        input_size: number of input features.
        net_arch: hidden-layer widths, e.g. ``[5, 3]``; ``[]`` for no hidden layer.
        output_size: number of outputs.
        activation: hidden activation, one of ``sigmoid``, ``tanh``, ``relu``, ``identity``.
        output_activation: ``sigmoid``, ``tanh``, ``relu``, ``identity`` or ``softmax``.
        loss: ``squared_error``, ``mse`` or ``cross_entropy`` (see module docstring).
        seed: seed of the initial weights, drawn U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch's
            ``nn.Linear`` does.

    Attributes:
        weights: list of ``(out_features, in_features)`` float64 arrays.
        biases: list of ``(out_features,)`` float64 arrays.

    Raises:
        ValueError: for non-positive sizes, unknown names, or cross-entropy without softmax.
    """

    def __init__(
        self,
        input_size: int,
        net_arch: Sequence[int],
        output_size: int,
        activation: str = "sigmoid",
        output_activation: str = "sigmoid",
        loss: str = "squared_error",
        seed: int = 0,
    ) -> None:
        sizes = [input_size, *net_arch, output_size]
        if any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive integers, got {sizes}")
        if activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"activation must be one of {HIDDEN_ACTIVATIONS}, got {activation!r}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}"
            )
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if (loss == "cross_entropy") != (output_activation == "softmax"):
            raise ValueError("cross_entropy requires output_activation='softmax' and vice versa")
        self.activation = activation
        self.output_activation = output_activation
        self.loss_name = loss
        rng = np.random.default_rng(seed)
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / np.sqrt(fan_in)
            self.weights.append(rng.uniform(-bound, bound, size=(fan_out, fan_in)))
            self.biases.append(rng.uniform(-bound, bound, size=(fan_out,)))

    @property
    def sizes(self) -> list[int]:
        """Layer widths ``[input, *net_arch, output]``."""
        return [self.weights[0].shape[1], *(w.shape[0] for w in self.weights)]

    def _check_inputs(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must have shape (batch, {self.sizes[0]}), got {x.shape}")
        return x

    def _check_targets(self, d: np.ndarray, batch: int) -> np.ndarray:
        d = np.asarray(d)
        if self.loss_name == "cross_entropy":
            d = d.reshape(-1)
            if d.shape != (batch,) or not np.issubdtype(d.dtype, np.integer):
                raise ValueError(f"cross_entropy targets must be ({batch},) integer classes")
            if d.min() < 0 or d.max() >= self.sizes[-1]:
                raise ValueError(f"class indices must lie in [0, {self.sizes[-1]})")
            return d
        d = d.astype(np.float64).reshape(batch, -1)
        if d.shape[1] != self.sizes[-1]:
            raise ValueError(f"targets must have shape ({batch}, {self.sizes[-1]}), got {d.shape}")
        return d

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Forward pass keeping what backprop needs.

        Args:
            x: ``(batch, input_size)`` (a single ``(input_size,)`` row is promoted).

        Returns:
            ``(pre_activations, activations)``: ``[a_1..a_L]`` and ``[h_0=x, h_1..h_L]``.

        Raises:
            ValueError: if ``x`` has the wrong shape.
        """
        h = self._check_inputs(x)
        pre, post = [], [h]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            a = h @ w.T + b
            h = _activate(self.output_activation if i == last else self.activation, a)
            pre.append(a)
            post.append(h)
        return pre, post

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Network output ``y`` of shape ``(batch, output_size)``."""
        return self.forward(x)[1][-1]

    def loss(self, x: np.ndarray, d: np.ndarray) -> float:
        """Batch-mean loss ``E`` of inputs ``x`` ``(batch, in)`` against targets ``d``."""
        y = self.predict(x)
        d = self._check_targets(d, y.shape[0])
        if self.loss_name == "cross_entropy":
            return float(-np.mean(np.log(y[np.arange(len(d)), d])))
        if self.loss_name == "mse":
            return float(np.mean((d - y) ** 2))
        return float(np.mean(0.5 * np.sum((d - y) ** 2, axis=1)))

    def output_error(self, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        """``dE/dy`` for one batch, ``(batch, output_size)``; not defined for cross-entropy.

        For ``squared_error`` this is ``(y - d) / batch`` (the article's ``dE/dy = y - d`` for a
        single sample).
        """
        if self.loss_name == "mse":
            return 2.0 * (y - d) / d.size
        if self.loss_name == "squared_error":
            return (y - d) / d.shape[0]
        raise ValueError("output_error is folded into delta_L for cross_entropy")

    def backward(self, x: np.ndarray, d: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gradients of the batch-mean loss with respect to every weight and bias.

        Args:
            x: ``(batch, input_size)`` inputs.
            d: targets: ``(batch, output_size)`` reals, or ``(batch,)`` class indices for
                cross-entropy.

        Returns:
            ``(dE/dW_l, dE/db_l)`` lists, shaped like :attr:`weights` and :attr:`biases`.

        Raises:
            ValueError: on shape mismatches or out-of-range class indices.
        """
        pre, post = self.forward(x)
        y = post[-1]
        d = self._check_targets(d, y.shape[0])
        if self.loss_name == "cross_entropy":
            delta = y.copy()
            delta[np.arange(len(d)), d] -= 1.0
            delta /= len(d)
        else:
            delta = self.output_error(y, d) * _derivative(self.output_activation, pre[-1], y)
        grad_w: list[np.ndarray] = [np.empty(0)] * len(self.weights)
        grad_b: list[np.ndarray] = [np.empty(0)] * len(self.weights)
        for layer in range(len(self.weights) - 1, -1, -1):
            grad_w[layer] = delta.T @ post[layer]
            grad_b[layer] = delta.sum(axis=0)
            if layer > 0:
                delta = (delta @ self.weights[layer]) * _derivative(
                    self.activation, pre[layer - 1], post[layer]
                )
        return grad_w, grad_b

    def train_step(self, x: np.ndarray, d: np.ndarray, lr: float) -> float:
        """One gradient-descent step ``theta <- theta - lr dE/dtheta``; returns ``E`` before it.

        Raises:
            ValueError: if ``lr`` is not positive, or on bad shapes.
        """
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        error = self.loss(x, d)
        grad_w, grad_b = self.backward(x, d)
        for w, b, gw, gb in zip(self.weights, self.biases, grad_w, grad_b):
            w -= lr * gw
            b -= lr * gb
        return error

    def train(
        self,
        x: np.ndarray,
        d: np.ndarray,
        epochs: int,
        lr: float,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> list[float]:
        """Minibatch gradient descent with seeded shuffling.

        Args:
            x: ``(n, input_size)`` inputs.
            d: ``(n, output_size)`` or ``(n,)`` targets.
            epochs: number of passes over the data (>= 1).
            lr: learning rate (> 0).
            batch_size: rows per step; ``None`` for full-batch.
            seed: seed of the shuffling.

        Returns:
            Mean loss over each epoch's batches (before each step), one value per epoch.

        Raises:
            ValueError: for ``epochs < 1``, ``batch_size < 1`` or bad ``lr``/shapes.
        """
        x = self._check_inputs(x)
        d = np.asarray(d)
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        batch_size = len(x) if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(seed)
        history = []
        for _ in range(epochs):
            order = rng.permutation(len(x))
            losses = [
                self.train_step(x[idx], d[idx], lr)
                for idx in np.array_split(order, max(1, int(np.ceil(len(x) / batch_size))))
            ]
            history.append(float(np.mean(losses)))
        return history
