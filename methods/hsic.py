"""The HSIC bottleneck: layer-wise training without backpropagation, then a "format" layer.

Ma, Lewis & Kleijn, "The HSIC bottleneck: deep learning without back-propagation", AAAI 2020
(arXiv 1908.01580), Sec. 3-4. Each hidden layer ``Z_i`` of the shared MLP minimises, on every
minibatch, its own objective (Eq. 6)::

    HSIC(Z_i, X) - beta * HSIC(Z_i, Y)

with ``X`` the flattened input and ``Y`` the one-hot label; the gradient of layer ``i``'s
objective is taken with respect to layer ``i``'s parameters only, on the detached output of
layer ``i - 1``. HSIC is estimated with Gaussian kernels of width ``sigma * sqrt(d)``
(:mod:`methods.hsic_estimators`).

Training has two phases within the epoch budget (``format_fraction`` splits it):

1. **HSIC phase** (the "unformatted" network): the hidden layers follow their objectives; the
   output layer is untouched.
2. **Format phase**: the hidden layers are frozen and the output layer (a linear classifier on
   the last hidden layer) is trained with cross-entropy by its own optimiser
   (``format_optimizer``; the authors' SGD with lr 0.005 and weight decay 1e-3 is replaced by
   default with Adam, lr 1e-2, for the reasons in ``conf/method/hsic.yaml``).

On the CNN (``model=cnn``) every hidden layer (each conv block, after its pooling, and each
hidden linear layer) is a ``Z_i``, its output flattened to ``(batch, C H W)`` for the kernel;
the output layer is the format layer, on the flattened last hidden layer. (Ma et al. also train
conv nets this way, Sec. 5; their code's conv nets are not reproduced here.)

Departures from the authors' code, with the reason: :class:`HSICBottleneck`.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from methods.base import Method, MethodConfigError, make_optimizer, register_method
from methods.hsic_estimators import ESTIMATORS, median_sigma
from methods.hsic_objective import ObjectiveOptions, layer_objectives
from methods.losses import CrossEntropy, Loss
from methods.networks import CNN, MLP
from methods.options import Bounds, OneOf, OptimizerConfig


@register_method("hsic")
class HSICBottleneck(Method):
    """HSIC-bottleneck training of an MLP classifier (Ma et al. 2020).

    Departures from the authors' code (choasma/HSIC-bottleneck), with the reason:

    * Network: the shared MLP without batch norm (theirs: Linear-BatchNorm-ReLU blocks), so that
      every method trains the same network.
    * Optimisers: Adam (hidden lr 1e-3, format lr 1e-2) instead of their SGD (hidden 1e-4,
      format 0.005): with the few steps per epoch of our datasets SGD barely trained
      (``conf/method/hsic.yaml``).
    * One optimiser, with one parameter group, for all hidden layers (theirs: one per layer, all
      with the same settings): the optimisers of ``torch.optim`` (but L-BFGS, which needs a
      closure) update each parameter from its own gradient and state only, so this is the same
      update, bit for bit, at one optimiser step's Python cost instead of one per layer.
    * The optimiser keeps its state across steps; theirs are rebuilt every step, losing momentum
      (a pitfall, reproducible with ``rebuild_optimizers_each_step=true``).
    * All layers' updates come from one forward pass of the batch (theirs re-runs the forward
      pass after each layer's step), as for the other layer-local rules, at one pass's cost.
    * nHSIC is computed in an equivalent symmetric form, ``tr(S_A S_B)`` with
      ``S = H K H (H K H + epsilon m I)^-1`` inverted by Cholesky, with a written-out gradient
      (:mod:`methods.hsic_objective`): the same value as their ``tr(R_A R_B)`` with LU solves,
      to rounding, at two thirds of the step's cost.
    * The format phase is part of the run's epoch budget (``format_fraction``), so that every
      method gets the same number of epochs.
    * Accuracy: plain argmax once formatted; before, each last-hidden unit votes for its
      majority label (theirs matches outputs to labels by a permutation, which needs one unit
      per class).

    Args:
        model: an :class:`~methods.networks.MLP` or :class:`~methods.networks.CNN`; its output
            layer is the format layer.
        loss: must be :class:`~methods.losses.CrossEntropy` (``Y`` is one-hot).
        optimizer: config of the hidden layers' optimiser (one for all hidden layers).
        format_optimizer: config of the format layer's optimiser.
        beta: ``beta`` of Eq. 6 (> 0; the paper's MNIST MLP uses 50).
        sigma: kernel scale (> 0; the paper's 5), width ``sigma * sqrt(features)``.
        median_heuristic: use :func:`median_sigma` of each batch instead of ``sigma``.
        estimator: ``normalized`` (the authors' nHSIC) or ``biased`` (Gretton et al. 2005).
        epsilon: regulariser of the normalised estimator (> 0; the authors' 1e-5).
        format_fraction: fraction of the epoch budget given to the format phase, in (0, 1);
            at least one epoch of each phase when the budget has two or more epochs.
        rebuild_optimizers_each_step: reproduce the authors' code, which creates a fresh
            optimiser for every step (optimiser state such as momentum is lost).

    Raises:
        MethodConfigError: for a model that is neither an MLP nor a CNN, a non-classification
            loss or bad options.
    """

    # Rebuilt from the config: the objective's constants (a named tuple) and the list of the
    # hidden layers' parameters (listed once: walking the modules costs on every step).
    transient_attributes = frozenset({"objective_options", "hidden_parameters"})

    def __init__(
        self,
        model: MLP | CNN,
        loss: Loss,
        optimizer: OptimizerConfig,
        format_optimizer: OptimizerConfig,
        beta: Annotated[float, Bounds(gt=0)] = 50.0,
        sigma: Annotated[float, Bounds(gt=0)] = 5.0,
        median_heuristic: bool = False,
        estimator: Annotated[str, OneOf(*ESTIMATORS)] = "normalized",
        epsilon: Annotated[float, Bounds(gt=0)] = 1e-5,
        format_fraction: Annotated[float, Bounds(gt=0, lt=1)] = 0.25,
        rebuild_optimizers_each_step: bool = False,
    ) -> None:
        super().__init__(model, loss)
        self.require_model((MLP, CNN), ("mlp", "cnn"))
        if not isinstance(loss, CrossEntropy):
            raise MethodConfigError(
                f"method=hsic needs a classification dataset (one-hot Y), got a {loss.name} loss"
            )
        self.beta, self.sigma, self.epsilon = beta, sigma, epsilon
        self.median_heuristic = median_heuristic
        self.estimator = estimator
        self.objective_options = ObjectiveOptions(estimator, beta, epsilon)
        self.format_fraction = format_fraction
        self.rebuild_optimizers_each_step = rebuild_optimizers_each_step
        # Fresh optimisers every step cannot carry a learning-rate schedule.
        self.persistent_optimizers = not rebuild_optimizers_each_step
        self.optimizer_config = dict(optimizer)
        hidden = model.layers[:-1]
        self.hidden_parameters = [p for layer in hidden for p in layer.parameters()]
        self.hidden_optimizer = make_optimizer(
            self.hidden_parameters, optimizer, "method.optimizer"
        )
        self.format_optimizer = make_optimizer(
            model.layers[-1].parameters(), format_optimizer, "method.format_optimizer"
        )
        self.hsic_epochs = math.inf  # set by on_train_start
        # Unformatted accuracy: which label each last-hidden unit stands for, by majority vote of
        # the training examples on which it was the argmax (previous epoch's counts).
        width = (
            math.prod(model.hidden_shapes[-1]) if isinstance(model, CNN) else model.hidden_sizes[-1]
        )
        self._votes = torch.zeros(width, model.output_size, device=self.device)
        self._unit_labels: torch.Tensor | None = None
        self._unformatted_hits = 0.0
        self._unformatted_seen = 0

    def on_train_start(self, epochs: int, batches_per_epoch: int) -> None:
        """Split the budget: the last ``format_fraction`` of the epochs format the network."""
        format_epochs = min(max(1, round(self.format_fraction * epochs)), epochs - 1)
        self.hsic_epochs = epochs - format_epochs if epochs > 1 else 1

    @property
    def formatting(self) -> bool:
        """Whether the current :attr:`epoch` belongs to the format phase."""
        return self.epoch - 1 >= self.hsic_epochs

    def _scale(self, a: torch.Tensor) -> float | torch.Tensor:
        """``1 / (2 sigma^2 d)`` of the Gaussian kernel of ``a`` ``(m, d)``.

        A number, or a 0-d tensor with the median heuristic (:func:`median_sigma`).
        """
        sigma = median_sigma(a) if self.median_heuristic else self.sigma
        return 1.0 / (2.0 * sigma**2 * a.shape[1])

    def objectives(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per hidden layer ``i``: ``(objective, HSIC(Z_i, X), HSIC(Z_i, Y))`` (0-d tensors).

        ``Z_i`` is computed from the detached ``Z_{i-1}``, so layer ``i``'s objective depends on
        layer ``i``'s parameters only; the two estimates are not differentiable.
        """
        objective, estimates = self._objectives_and_top(x, y)[0]
        return [(o, e[0], e[1]) for o, e in zip(objective.unbind(), estimates, strict=True)]

    def _objectives_and_top(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The estimates of :meth:`objectives` and the last hidden layer ``Z_H``, detached.

        The estimates are ``(objective, HSIC)``: the objectives ``(hidden layers,)`` and
        ``HSIC(Z_i, X), HSIC(Z_i, Y)`` ``(hidden layers, 2)``, all layers' computed together
        (:func:`methods.hsic_objective.layer_objectives`). ``Z_H`` is ``(batch, width)``,
        ``width`` the number of units of the last hidden layer (flattened for a conv block).
        """
        inputs = x.flatten(1)
        onehot = F.one_hot(y, self.model.output_size).to(inputs.dtype)
        z = inputs if isinstance(self.model, MLP) else x
        zs = []
        for index in range(self.model.depth - 1):
            z = self.model.layer_forward(index, z.detach())
            zs.append(z.flatten(1))
        scales = [self._scale(a) for a in (inputs, onehot, *zs)]
        estimates = layer_objectives(inputs, onehot, zs, scales, self.objective_options)
        return estimates, z.detach().flatten(1)

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """HSIC phase: each hidden layer's objective gradient; format phase: the format layer's.

        Parameters not trained in the current phase keep ``.grad = None`` (no update).
        """
        self.zero_grad()
        formatting = self.formatting
        with torch.set_grad_enabled(not formatting):
            estimates, features = self._objectives_and_top(x, y)
        objective, hsic = estimates
        if not formatting:
            # One backward pass for all layers: each layer's objective depends on its own
            # parameters only (detached inputs), so the gradient of their sum (a weight of 1
            # each) with respect to them is that objective's, computed with the same
            # operations. The .grad are None (zero_grad): backward stores the gradients.
            torch.autograd.backward(
                objective, torch.ones_like(objective), inputs=self.hidden_parameters
            )
        with torch.no_grad():
            self._vote(features.argmax(dim=1), y)
        head = self.model.layers[-1]
        output = head(features)
        if formatting:
            params = list(head.parameters())
            for param, grad in zip(params, torch.autograd.grad(self.loss(output, y), params)):
                param.grad = grad
        # One conversion for all estimates (the same values as one .item() each).
        for i, (zx, zy) in enumerate(hsic.tolist(), start=1):
            self.means.add(f"hsic_zx_layer{i}", zx)
            self.means.add(f"hsic_zy_layer{i}", zy)
        return self.loss.metrics(output.detach(), y)

    def _vote(self, units: torch.Tensor, y: torch.Tensor) -> None:
        if self._unit_labels is not None:
            self._unformatted_hits += (self._unit_labels[units] == y).sum().item()
            self._unformatted_seen += len(y)
        self._votes.index_put_(
            (units, y), torch.ones_like(units, dtype=self._votes.dtype), accumulate=True
        )

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The hidden layers' optimiser (HSIC phase) and the format layer's optimiser."""
        return [self.hidden_optimizer, self.format_optimizer]

    def apply_update(self) -> None:
        """Step the hidden layers' optimiser (HSIC phase) or the format one (format phase)."""
        if self.formatting:
            self.format_optimizer.step()
            return
        if self.rebuild_optimizers_each_step:
            self.hidden_optimizer = make_optimizer(
                self.hidden_parameters, self.optimizer_config, "method.optimizer"
            )
        self.hidden_optimizer.step()

    def epoch_metrics(self) -> dict[str, float]:
        """Epoch metrics of the HSIC network.

        ``hsic_zx_layer{i}``, ``hsic_zy_layer{i}``: epoch means of the estimates (1-based hidden
        layers); ``phase``: 0 in the HSIC phase, 1 in the format phase;
        ``unformatted_train_accuracy`` (from the second epoch): accuracy on this epoch's training
        batches of the unformatted network, reading each example's label off the argmax unit of
        the last hidden layer, each unit standing for the majority label among the previous
        epoch's examples it won (the paper matches a permutation when there are as many units
        as classes). ``test_accuracy`` is the format layer's: chance level until the format
        phase starts.
        """
        metrics = self.means.values()
        metrics["phase"] = float(self.formatting)
        if self._unformatted_seen:
            metrics["unformatted_train_accuracy"] = self._unformatted_hits / self._unformatted_seen
        return metrics

    def reset_epoch_metrics(self) -> None:
        """Clear the epoch means; the epoch's votes become the units' labels for the next one."""
        super().reset_epoch_metrics()
        self._unit_labels = self._votes.argmax(dim=1)
        self._votes.zero_()
        self._unformatted_hits, self._unformatted_seen = 0.0, 0
