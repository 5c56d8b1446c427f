"""Decoupled neural interfaces: synthetic gradients for feed-forward networks (DNI, cDNI).

Jaderberg, Czarnecki, Osindero, Vinyals, Graves, Silver & Kavukcuoglu, "Decoupled neural
interfaces using synthetic gradients", ICML 2017 (arXiv 1608.05343), Sec. 2 and 3.2.

By default the MLP is cut after every hidden layer ``h_i`` (i = 1..H), so block ``i`` is layer
``i`` and the output block is the output layer, as in the paper's feed-forward experiments, which
decouple every layer. ``interfaces`` places the cuts after chosen hidden layers only: a block then
spans the layers between two cuts, and ``interfaces=[H]`` is the single interface after the last
hidden layer of koz4k/dni-pytorch's MNIST example. A synthetic-gradient module ``M_i`` at each
cut predicts ``dL/dh_i`` from ``h_i`` (cDNI: from ``h_i`` and the one-hot label,
``conditioned=true``).

* Update-unlocked forward updates: the parameters of the block ending at cut ``i`` get
  ``(dh_i/dtheta)^T M_i(h_i)`` at once, computed on the block's detached input; the output block
  gets the true gradient of ``L``.
* ``M_i`` regresses (MSE) onto the gradient arriving from above, detached: the true ``dL/dh_i``
  for the last cut, the bootstrapped ``(dh_j/dh_i)^T M_j(h_j)`` from the next cut ``j`` below
  it (Sec. 2, Fig. 2). Training the modules never
  touches the base network (their gradients are taken with respect to their own parameters only,
  after the base network's update has been written).
* ``M_i`` is linear or a small MLP (``hidden_sizes``) with its output layer zero-initialised, so
  training starts with zero synthetic gradients (Sec. 3).

On the CNN (``model=cnn``) the network is cut after every hidden layer (each conv block, after
its pooling, and each hidden linear layer). A conv block's ``M_i`` is itself a small CNN
(:class:`ConvSyntheticGradientModule`: ``conv_hidden_channels`` ReLU conv layers and a
zero-initialised output conv, all ``conv_kernel_size`` wide with "same" padding, as the paper's
conv nets use convolutional synthetic-gradient models, Sec. 3.2); cDNI's one-hot label enters it
as constant extra input channels. A linear layer's ``M_i`` is the MLP's module.

Logged per epoch: ``sg_loss_layer{i}`` (mean training MSE of ``M_i``) and ``sg_cosine_layer{i}``:
the cosine between ``M_i(h_i)`` and the true backprop ``dL/dh_i`` on a fixed probe batch (the
first training batch), a diagnostic not used for training (:func:`methods.geometry.cosine`: NaN
while ``M_i`` predicts exactly zero, as its zero-initialised output layer does at the start).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method, MethodConfigError, make_optimizer, register_method
from methods.geometry import cosine
from methods.losses import CrossEntropy, Loss
from methods.networks import CNN, MLP
from methods.options import Bounds, OptimizerConfig


def zero_output_stack(
    sizes: Sequence[int], layer: Callable[[int, int], nn.Module]
) -> nn.Sequential:
    """``layer(sizes[0], sizes[1])``, ReLU, ..., ``layer(sizes[-2], sizes[-1])``, the last at zero.

    A synthetic-gradient module starts by predicting a zero gradient (Jaderberg et al. 2017,
    Sec. 3), so the last layer's weight and bias are zero-initialised.

    Args:
        sizes: widths (or channels) from input to output, at least two.
        layer: builds one affine layer from its input and output sizes (``nn.Linear``, a conv).
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(layer(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class SyntheticGradientModule(nn.Module):
    """``M(h[, c]) -> dL/dh estimate``: ``(batch, width) -> (batch, width)``.

    Args:
        width: size of the decoupled activation ``h``.
        context_size: size of the conditioning vector ``c`` (0 for plain DNI).
        hidden_sizes: ReLU hidden layers (``[]``: linear, as the paper's cDNI).

    The output layer starts at zero (Jaderberg et al. 2017, Sec. 3).
    """

    def __init__(self, width: int, context_size: int = 0, hidden_sizes: Sequence[int] = ()):
        super().__init__()
        self.net = zero_output_stack([width + context_size, *hidden_sizes, width], nn.Linear)

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ``dL/dh`` for ``h`` ``(batch, width)`` and optional ``context``."""
        return self.net(h if context is None else torch.cat([h, context], dim=1))


class ConvSyntheticGradientModule(nn.Module):
    """``M(h[, c]) -> dL/dh estimate`` for a conv block: ``(batch, C, H, W) -> (batch, C, H, W)``.

    Args:
        channels: ``C``, the decoupled block's output channels.
        context_size: size of the conditioning vector ``c`` (0 for plain DNI); ``c``
            ``(batch, context_size)`` is broadcast to ``context_size`` constant channels.
        hidden_channels: ReLU conv layers before the output conv (``[]``: one conv, linear).
        kernel_size: odd kernel side of every conv, zero padding ``kernel_size // 2`` (the
            shape is kept).

    The output conv starts at zero (Jaderberg et al. 2017, Sec. 3).
    """

    def __init__(
        self,
        channels: int,
        context_size: int = 0,
        hidden_channels: Sequence[int] = (),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.net = zero_output_stack(
            [channels + context_size, *hidden_channels, channels],
            lambda a, b: nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2),
        )

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ``dL/dh`` for ``h`` ``(batch, C, H, W)`` and optional ``context``."""
        if context is not None:
            planes = context[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, planes], dim=1)
        return self.net(h)


@register_method("dni")
class DecoupledNeuralInterfaces(Method):
    """Feed-forward DNI / cDNI (Jaderberg et al. 2017).

    Cost: each step is backprop's forward and backward (in per-block pieces) plus every
    ``M_i``'s forward, backward and optimiser step. With the official feed-forward setup's
    one-hidden-layer 256-unit modules on a 784-256-256-10 network, the two modules hold
    263k parameters against the network's 269k, and their matrix products take more FLOPs
    than the network's (about 84 against 78 MFLOP at batch 64), so a step costs at least about
    twice backprop's; the default two 1024-unit hidden layers cost about 8 times more again
    (docs/performance.md).

    Departures from the paper, with the reason:

    * Network: the shared MLP without batch norm (the paper's feed-forward nets have 256-unit
      layers with batch norm and ReLU), so that every method trains the same network.
    * Base optimiser: backprop's (``conf/method/backprop.yaml``), so DNI and backprop differ
      only in the gradient signal.
    * cDNI on a regression task conditions on the target itself (the paper conditions on the
      class label); a classification task gets the paper's one-hot label.
    * CNN: the conv synthetic-gradient modules' width and kernel (``conv_hidden_channels``,
      ``conv_kernel_size``) are this harness's choice, not the paper's; no tuned values yet.

    Args:
        model: an :class:`~methods.networks.MLP`.
        loss: task loss (cDNI conditions on the one-hot label for classification, on the target
            itself for regression).
        optimizer: optimiser config for the base network.
        synthetic_optimizer: optimiser config for the synthetic-gradient modules.
        conditioned: cDNI (``M_i`` also sees the label).
        hidden_sizes: hidden layers of each ``M_i`` of a linear layer; ``[]`` for linear
            modules.
        conv_hidden_channels: CNN only: hidden conv layers of each conv block's ``M_i``
            (:class:`ConvSyntheticGradientModule`); ``[]`` for a single conv.
        conv_kernel_size: CNN only: kernel side of those convs (odd).
        interfaces: the hidden layers (1-based, ascending) cut by a synthetic-gradient module;
            ``None`` (the default) cuts after every hidden layer, as the paper's feed-forward
            experiments do. ``[H]`` (the last hidden layer only) is the setup of
            koz4k/dni-pytorch's MNIST example, which the benchmark compares against.

    Raises:
        MethodConfigError: for a model that is neither an MLP nor a CNN, or bad options
            (``interfaces`` empty, repeated, unsorted or outside ``1..H``).
    """

    # The modules' own parameters (saved with the modules) and where the cuts are (from the
    # config): not state of their own.
    transient_attributes = frozenset({"synthetic_parameters", "interfaces", "module_of"})

    def __init__(
        self,
        model: MLP | CNN,
        loss: Loss,
        optimizer: OptimizerConfig,
        synthetic_optimizer: OptimizerConfig,
        conditioned: bool = False,
        hidden_sizes: Annotated[Sequence[int], Bounds(ge=1)] = (),
        conv_hidden_channels: Annotated[Sequence[int], Bounds(ge=1)] = (),
        conv_kernel_size: Annotated[int, Bounds(ge=1)] = 3,
        interfaces: Annotated[Sequence[int] | None, Bounds(ge=1)] = None,
    ) -> None:
        super().__init__(model, loss)
        self.require_model((MLP, CNN), ("mlp", "cnn"))
        if conv_kernel_size % 2 == 0:  # "same" padding keeps the shape only for odd kernels
            raise MethodConfigError(f"method.conv_kernel_size: must be odd, got {conv_kernel_size}")
        self.conditioned = conditioned
        context = model.output_size if conditioned else 0
        shapes = (
            model.hidden_shapes
            if isinstance(model, CNN)
            else [(width,) for width in model.hidden_sizes]
        )
        hidden_count = len(shapes)
        if interfaces is None:
            interfaces = range(1, hidden_count + 1)
        self.interfaces = tuple(interfaces)
        if not self.interfaces or list(self.interfaces) != sorted(set(self.interfaces)):
            raise MethodConfigError(
                f"method.interfaces: must list hidden layers in ascending order, each once, "
                f"got {list(self.interfaces)}"
            )
        if self.interfaces[-1] > hidden_count:
            raise MethodConfigError(
                f"method.interfaces: the network has hidden layers 1..{hidden_count}, "
                f"got {list(self.interfaces)}"
            )
        # Which module serves hidden layer i (1-based): index into synthetic_modules.
        self.module_of = {layer: k for k, layer in enumerate(self.interfaces)}
        shapes = [shapes[layer - 1] for layer in self.interfaces]
        self.synthetic_modules = nn.ModuleList(
            ConvSyntheticGradientModule(shape[0], context, conv_hidden_channels, conv_kernel_size)
            if len(shape) == 3
            else SyntheticGradientModule(shape[0], context, hidden_sizes)
            for shape in shapes
        ).to(next(model.parameters()))
        # Listed once: the modules' parameters never change identity (checkpoints load into them).
        self.synthetic_parameters = tuple(self.synthetic_modules.parameters())
        self.optimizer = make_optimizer(model.parameters(), optimizer)
        self.synthetic_optimizer = make_optimizer(
            self.synthetic_parameters, synthetic_optimizer, "method.synthetic_optimizer"
        )

    def context(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """CDNI's conditioning vector: one-hot labels or regression targets; else ``None``."""
        if not self.conditioned:
            return None
        if isinstance(self.loss, CrossEntropy):
            return F.one_hot(y, self.model.output_size).to(like.dtype)
        return y.to(like.dtype).reshape(len(y), -1)

    def synthetic_gradient(self, i: int, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``M_i(h_i[, y])`` for hidden layer ``i`` (1-based, one of ``interfaces``).

        Shaped like ``h_i``. The prediction the base network is updated with (tests replace it
        with an oracle). Called with gradients enabled in :meth:`compute_update`, so that the
        same output also trains ``M_i`` (:meth:`train_synthetic`).
        """
        return self.synthetic_modules[self.module_of[i]](h, self.context(y, h))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The network's optimiser and the synthetic-gradient modules' optimiser."""
        return [*super().optimizers(), self.synthetic_optimizer]

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write the synthetic-gradient updates into ``.grad``, then train the modules.

        Every block's input is detached, so each block's backward pass is separate. They run as
        one call of the autograd engine (``torch.autograd.backward`` on every block's output
        with its own ``grad_outputs``), which computes exactly what one call per block would.
        """
        self.keep_probe(x, y)
        self.zero_grad()
        h = x.flatten(1) if isinstance(self.model, MLP) else x
        hidden: list[torch.Tensor] = []  # h_i at each cut, detached: the inputs of the modules
        leaves: list[torch.Tensor] = []  # detached block inputs above each cut: dL/d(input)
        outputs: list[torch.Tensor] = []  # block outputs, with their block's graph
        grad_outputs: list[torch.Tensor | None] = []  # M_i(h_i), detached (the backward signal)
        predictions = []  # M_i(h_i) with its graph, reused to train M_i (one forward, not two)
        for index in range(len(self.model.layers)):
            if index in self.module_of:  # the layer below (1-based `index`) is a cut
                h = h.detach().requires_grad_(True)
                leaves.append(h)
            h = self.model.layer_forward(index, h)
            if index + 1 in self.module_of:
                prediction = self.synthetic_gradient(index + 1, h.detach(), y)
                predictions.append(prediction)
                outputs.append(h)
                grad_outputs.append(prediction.detach())
                hidden.append(h.detach())
        output = h
        loss = self.loss(output, y)
        # The output block gets the true gradient; below each cut, (dh_i/dtheta)^T M_i(h_i).
        torch.autograd.backward([*outputs, loss], [*grad_outputs, None])
        # Target of M_i: (dh_j/dh_i)^T M_j(h_j) from the block above (up to the next cut j), or
        # for the last cut the true dL/dh_i; each is the .grad of that block's detached input.
        targets = [leaf.grad for leaf in leaves]
        self.train_synthetic(hidden, targets, y, predictions)
        return self.loss.metrics(output.detach(), y, loss.detach())

    def train_synthetic(
        self,
        hidden: list[torch.Tensor],
        targets: list[torch.Tensor],
        y: torch.Tensor,
        predictions: Sequence[torch.Tensor | None] | None = None,
    ) -> list[float]:
        """One step of every ``M_i`` towards its (detached) target; returns the MSE losses.

        Args:
            hidden: ``h_i`` ``(batch, width_i)`` for each ``i`` in ``interfaces``.
            targets: the regression target of each ``M_i``, same shapes.
            y: labels (cDNI's context).
            predictions: ``M_i(h_i)`` already computed with its graph at the current module
                parameters (then not recomputed: the same values, one forward pass less); an
                entry without a graph (e.g. a test's oracle) or ``None`` is recomputed.
        """
        if predictions is None:
            predictions = [None] * len(hidden)
        losses = [
            F.mse_loss(
                prediction
                if prediction is not None and prediction.requires_grad
                else module(h.detach(), self.context(y, h)),
                target.detach(),
            )
            for module, h, target, prediction in zip(
                self.synthetic_modules, hidden, targets, predictions
            )
        ]
        params = self.synthetic_parameters
        for param, grad in zip(params, torch.autograd.grad(sum(losses), params)):
            param.grad = grad
        self.synthetic_optimizer.step()
        values = [value.item() for value in losses]
        for i, value in zip(self.interfaces, values):
            self.means.add(f"sg_loss_layer{i}", value)
        return values

    def true_hidden_gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Backprop's ``dL/dh_i`` for i = 1..H on a batch (no ``.grad`` touched)."""
        activations = self.model.forward_layers(x)
        return list(torch.autograd.grad(self.loss(activations[-1], y), activations[:-1]))

    def epoch_metrics(self) -> dict[str, float]:
        """``sg_loss_layer{i}`` epoch means and ``sg_cosine_layer{i}`` on the probe batch.

        One of each for every ``i`` in ``interfaces``.
        """
        metrics = self.means.values()
        if self.probe is not None:
            x, y = self.probe
            activations = self.model.forward_layers(x)  # one forward serves both sides
            cut = [activations[i - 1] for i in self.interfaces]
            true = torch.autograd.grad(self.loss(activations[-1], y), cut)
            with torch.no_grad():
                for i, h, g in zip(self.interfaces, cut, true):
                    prediction = self.synthetic_gradient(i, h.detach(), y)
                    metrics[f"sg_cosine_layer{i}"] = cosine(prediction, g)
        return metrics


@register_method("cdni")
class ConditionedDNI(DecoupledNeuralInterfaces):
    """cDNI: :class:`DecoupledNeuralInterfaces` with ``conditioned=True`` by default."""

    # A bound default, not a copied constructor: the option check reads this signature.
    __init__ = functools.partialmethod(DecoupledNeuralInterfaces.__init__, conditioned=True)
