"""The MLP shared by every method, so that all rules train the same network (``model=mlp``).

The MLP exposes its layers and activation explicitly (rather than as an opaque
``nn.Sequential``) because layer-local rules (target propagation, feedback alignment, HSIC, ...)
need each layer's input and output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
from torch import nn

from methods.options import Bounds, NonEmpty, OneOf

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}

INITS = (
    "default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
)


class MLP(nn.Module):
    """Fully connected network ``x -> act(W_1 x + b_1) -> ... -> W_L h_{L-1} + b_L``.

    The output layer is linear (logits for classification, predictions for regression).

    Args:
        input_size: number of input features; inputs ``(batch, *shape)`` are flattened to
            ``(batch, input_size)``.
        hidden_sizes: width of each hidden layer, e.g. ``[256, 256]``; must be non-empty.
        output_size: number of outputs (classes or regression targets).
        activation: one of ``relu``, ``tanh``, ``sigmoid``, ``identity``.
        init: weight initialisation; ``default`` keeps PyTorch's, the others are the
            ``torch.nn.init`` schemes of the same name (gain from the activation) with zero
            biases.

    Raises:
        ValueError: for non-positive sizes, empty ``hidden_sizes``, or unknown names.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        output_size: int,
        activation: str = "relu",
        init: str = "default",
    ) -> None:
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        if not hidden_sizes:
            raise ValueError("model.hidden_sizes: must list at least one hidden layer width")
        for key, sizes in (
            ("input_size", [input_size]),
            ("hidden_sizes", hidden_sizes),
            ("output_size", [output_size]),
        ):
            if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
                raise ValueError(f"model.{key}: sizes must be positive integers, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation: unknown activation {activation!r}; "
                f"expected one of {', '.join(ACTIVATIONS)}"
            )
        if init not in INITS:
            raise ValueError(f"model.init: unknown init {init!r}; expected one of {INITS}")
        self.input_size = input_size
        self.hidden_sizes = hidden_sizes
        self.output_size = output_size
        self.activation_name = activation
        self.init_name = init
        sizes = [input_size, *hidden_sizes, output_size]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = ACTIVATIONS[activation]()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)initialise every layer with the configured scheme, from torch's global RNG."""
        gain_name = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(
            self.activation_name, "linear"
        )
        for layer in self.layers:
            layer.reset_parameters()
            if self.init_name == "default":
                continue
            if self.init_name.startswith("kaiming"):
                nonlinearity = "relu" if self.activation_name == "relu" else "linear"
                getattr(nn.init, f"{self.init_name}_")(layer.weight, nonlinearity=nonlinearity)
            else:
                gain = nn.init.calculate_gain(gain_name)
                getattr(nn.init, f"{self.init_name}_")(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)

    @property
    def depth(self) -> int:
        """Number of linear layers (hidden layers + the output layer)."""
        return len(self.layers)

    def layer_forward(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s (0-based) output from its input ``h``, as in :meth:`forward_layers`.

        ``f(W h + b)`` for a hidden layer, ``W h + b`` for the output layer; ``h`` is flattened
        to ``(batch, features)`` (the same interface as :class:`~methods.networks.cnn.CNN`).
        """
        out = self.layers[index](h.flatten(1))
        return self.activation(out) if index < len(self.layers) - 1 else out

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All layer outputs ``[h_1, ..., h_{L-1}, o]``: hidden activations, then the logits.

        Args:
            x: ``(batch, *shape)`` with ``prod(shape) == input_size``.
        """
        h = x.flatten(1)
        outputs = []
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, *shape)`` to ``(batch, output_size)``."""
        return self.forward_layers(x)[-1]


def build_mlp(
    input_shape: Sequence[int],
    output_size: int,
    hidden_sizes: Annotated[Sequence[int], NonEmpty(), Bounds(ge=1)],
    activation: Annotated[str, OneOf(*ACTIVATIONS)] = "relu",
    init: Annotated[str, OneOf(*INITS)] = "default",
) -> MLP:
    """Build the shared MLP (see :class:`MLP`) for inputs of ``input_shape``, flattened.

    The entry point of ``model=mlp``; ``input_shape`` is one example's shape, e.g. ``(40,)``.
    """
    input_size = math.prod(input_shape)
    return MLP(input_size, hidden_sizes, output_size, activation=activation, init=init)
