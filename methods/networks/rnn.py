"""The small recurrent network of the recurrent track (``model=rnn``).

The recurrence is unrolled step by step in Python (cells, not the fused ``nn.RNN``), so that every
hidden state ``h_t`` is a tensor of the graph: truncated BPTT detaches it at segment borders and
the diagnostics read ``dL/dh_t`` off it (Pascanu, Mikolov & Bengio 2013, Sec. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from methods.networks.mlp import ACTIVATIONS


class VanillaCell(nn.Module):
    """Elman cell ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``: (batch, in) -> (batch, h).

    Like ``nn.RNNCell`` (same parameter names and init) but with any activation, including the
    identity that the closed-form gradient checks need.
    """

    def __init__(self, input_size: int, hidden_size: int, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation: must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        self.activation = ACTIVATIONS[activation]()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(h), 1/sqrt(h)) for every parameter, as ``nn.RNNCell``."""
        bound = self.hidden_size**-0.5
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step: ``(batch, in), (batch, h) -> (batch, h)``."""
        return self.activation(
            x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        )


CELLS = {"rnn": VanillaCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}
INITS = ("default", "orthogonal", "spectral")
READOUTS = ("last", "every")

# A recurrent state: per layer, h (GRU/RNN) or (h, c) (LSTM).
State = list[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


class RecurrentNetwork(nn.Module):
    """A stack of recurrent cells with a linear readout.

    Args:
        input_size: features per time step; inputs are ``(batch, T, input_size)`` (a
            ``(batch, T)`` input is read as one feature per step).
        output_size: classes or regression outputs.
        hidden_size: units per layer (>= 1).
        num_layers: stacked cells (>= 1).
        cell: ``rnn`` (vanilla Elman RNN), ``gru`` or ``lstm``.
        activation: the vanilla cell's activation (``tanh`` by default; ``identity`` gives a
            linear RNN); ignored by the gated cells.
        readout: ``last``: one output from the last hidden state, ``(batch, outputs)``;
            ``every``: one output per step, ``(batch, T, outputs)``.
        init: ``default`` (PyTorch's), ``orthogonal`` (every ``W_hh`` block orthogonal), or
            ``spectral``: ``W_hh`` of each vanilla RNN layer rescaled so that its spectral radius
            (largest ``|eigenvalue|``) equals ``spectral_radius``.
        spectral_radius: target radius for ``init=spectral`` (> 0).

    Raises:
        ValueError: for bad sizes, unknown names, or ``init=spectral`` with a gated cell.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "rnn",
        readout: str = "last",
        init: str = "default",
        spectral_radius: float = 1.0,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        for key, value in (
            ("input_size", input_size),
            ("output_size", output_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{key}: must be a positive integer, got {value!r}")
        if cell not in CELLS:
            raise ValueError(f"model.cell: must be one of {', '.join(CELLS)}, got {cell!r}")
        if readout not in READOUTS:
            raise ValueError(f"model.readout: must be one of {', '.join(READOUTS)}")
        if init not in INITS:
            raise ValueError(f"model.init: must be one of {', '.join(INITS)}, got {init!r}")
        if init == "spectral" and cell != "rnn":
            raise ValueError("model.init: 'spectral' applies to model.cell=rnn only")
        if not spectral_radius > 0:
            raise ValueError(f"model.spectral_radius: must be > 0, got {spectral_radius}")
        self.input_size, self.output_size = input_size, output_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.cell_name, self.readout, self.init_name = cell, readout, init
        self.spectral_radius = spectral_radius
        sizes = [input_size] + [hidden_size] * num_layers
        self.cells = nn.ModuleList(
            VanillaCell(a, hidden_size, activation)
            if cell == "rnn"
            else CELLS[cell](a, hidden_size)
            for a in sizes[:-1]
        )
        self.head = nn.Linear(hidden_size, output_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every cell with the configured scheme, from torch's global RNG."""
        for cell in self.cells:
            cell.reset_parameters()
            if self.init_name == "default":
                continue
            gates = cell.weight_hh.shape[0] // self.hidden_size
            with torch.no_grad():
                for g in range(gates):
                    block = cell.weight_hh[g * self.hidden_size : (g + 1) * self.hidden_size]
                    nn.init.orthogonal_(block)
                    if self.init_name == "spectral":
                        radius = torch.linalg.eigvals(block).abs().max()
                        block.mul_(self.spectral_radius / radius)
        self.head.reset_parameters()

    def recurrent_weights(self) -> list[torch.Tensor]:
        """``W_hh`` of each layer, ``(gates * hidden, hidden)``."""
        return [cell.weight_hh for cell in self.cells]

    def initial_state(self, batch: int, like: torch.Tensor) -> State:
        """Zero state for ``batch`` sequences on ``like``'s device and dtype."""
        zeros = like.new_zeros(batch, self.hidden_size)
        return [(zeros, zeros) if self.cell_name == "lstm" else zeros for _ in self.cells]

    def run(
        self, x: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], State]:
        """Unroll over ``x`` ``(batch, T, input_size)`` from ``state`` (zeros if ``None``).

        Returns:
            ``(outputs, hidden, state)``: outputs ``(batch, outputs)`` for ``readout=last`` or
            ``(batch, T, outputs)`` for ``every``; ``hidden`` the top layer's ``h_t`` for
            t = 1..T, each ``(batch, hidden_size)`` and part of the graph; the final state.
        """
        x = self.as_sequence(x)
        state = self.initial_state(len(x), x) if state is None else list(state)
        hidden = []
        for t in range(x.shape[1]):
            inputs = x[:, t]
            for layer, cell in enumerate(self.cells):
                state[layer] = cell(inputs, state[layer])
                inputs = state[layer][0] if self.cell_name == "lstm" else state[layer]
            hidden.append(inputs)
        if self.readout == "last":
            outputs = self.head(hidden[-1])
        else:
            outputs = self.head(torch.stack(hidden, dim=1))
        return outputs, hidden, state

    def as_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, T)`` -> ``(batch, T, 1)``; checks the feature size.

        Raises:
            ValueError: if the last dimension is not ``input_size``.
        """
        if x.ndim == 2:
            x = x.unsqueeze(-1)
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"expected (batch, T, {self.input_size}) sequences, got {tuple(x.shape)}"
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for ``x`` ``(batch, T, input_size)``, see :meth:`run`."""
        return self.run(x)[0]


def build_rnn(input_shape: Sequence[int], output_size: int, **options: Any) -> RecurrentNetwork:
    """Entry point of ``model=rnn``: a :class:`RecurrentNetwork` for inputs of ``input_shape``.

    Args:
        input_shape: one example's shape, ``(T, features)``, or ``(T,)`` for one feature per
            step.
        output_size: classes or regression outputs.
        options: the other arguments of :class:`RecurrentNetwork` (``conf/model/rnn.yaml``).

    Raises:
        ValueError: as :class:`RecurrentNetwork`, or for an input shape that is not a sequence.
    """
    if len(input_shape) not in (1, 2):
        raise ValueError(f"model=rnn needs sequence data (T, features), got shape {input_shape}")
    features = input_shape[1] if len(input_shape) == 2 else 1
    return RecurrentNetwork(features, output_size, **options)
