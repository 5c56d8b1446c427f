"""Feedback alignment (FA) and direct feedback alignment (DFA).

FA: Lillicrap, Cownden, Tweed & Akerman, "Random synaptic feedback weights support error
backpropagation for deep learning", Nature Communications 2016: the backward pass uses fixed
random matrices ``B_l`` in place of the transposed forward weights ``W_l^T``.
DFA: Nokland, "Direct feedback alignment provides learning in deep neural networks", NIPS 2016
(arXiv 1609.01596), Eq. 2-3: each hidden layer receives the output error through its own fixed
random matrix, ``delta_l = (B_l e) * f'(a_l)``.

For the MLP ``a_l = W_l h_{l-1} + b_l``, ``h_l = f(a_l)`` (l = 1..L, linear output layer) and
``e = dL/da_L`` (the gradient of the batch-mean loss at the logits), per batch::

    delta_L = e
    FA:   delta_l = (delta_{l+1} B_{l+1}) * f'(a_l),   B_{l+1} of shape (n_{l+1}, n_l) like W_{l+1}
    DFA:  delta_l = (e D_l) * f'(a_l),                 D_l of shape (n_L, n_l)
    dW_l = delta_l^T h_{l-1},  db_l = sum_n delta_l         (rows are examples)

With ``B_{l+1} = W_{l+1}`` (``feedback=symmetric``) FA is exactly backprop. The random matrices
are drawn once, U(-1/sqrt(rows), 1/sqrt(rows)) with ``rows`` the size of the error they carry
(Nokland's scaling), from ``feedback_seed`` (or from the run's seeded RNG when null), never
trained, and saved with the run as the artifact ``feedback_weights.pt``.

On the CNN (``model=cnn``, :class:`~methods.networks.CNN`) each layer is a conv block
``pool(f(conv(h)))`` or a linear layer, and errors travel between layer outputs:

* FA: the error at layer ``l``'s pre-activation, ``delta_l`` (through the pooling's and the
  activation's exact local derivatives), reaches layer ``l - 1``'s output through the
  transposed convolution with a fixed random kernel ``B_l`` shaped like the conv kernel
  ``W_l`` (the convolution's input gradient with ``B_l`` in place of ``W_l``; Nokland 2016 and
  Sanfiz & Akrout 2021 use the same conv feedback), in one autograd pass over the network
  whose layers' maps carry ``B_l`` backwards (:class:`_FeedbackAffine`);
* DFA: the output error is projected by a fixed ``D_l`` of shape ``(n_L, C_l H_l W_l)`` onto
  layer ``l``'s output ``(C_l, H_l, W_l)`` (after pooling), then through the pooling's and the
  activation's local derivatives, as ``delta_l = (e D_l) * f'(a_l)`` for the MLP;
* every layer's weight update is the exact local one, ``dW_l = conv2d_weight(h_{l-1},
  delta_l)``.

``B_l`` and ``D_l`` are drawn U(-1/sqrt(r), 1/sqrt(r)) with ``r = numel / shape[1]``: the rows
of a matrix, as above, and ``C_out k^2`` (the transposed convolution's fan-in) for a kernel.

No metric of its own: the angle between this method's update of ``W_l`` and the backprop
gradient is the harness's method-agnostic diagnostic ``alignment/layers.<l-1>.weight``
(``diagnostics.every_steps``), which compares any method's update with backprop.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch

from methods.autograd_kernels import activation_backward, has_closed_form, loss_and_output_grad
from methods.base import Method, make_optimizer, register_method
from methods.losses import Loss
from methods.networks import CNN, MLP
from methods.options import OneOf, OptimizerConfig

FEEDBACK = ("random", "symmetric")


class _FeedbackAffine(torch.autograd.Function):
    """A CNN layer's affine map ``a = W h + b`` whose input gradient uses ``B`` in place of ``W``.

    ``apply(h, W, b, B, layer)``: forward ``layer.pre(h)``, ``(batch, C_out, H', W')`` for a
    conv block (``h`` ``(batch, C_in, H, W)``, ``W`` and ``B`` ``(C_out, C_in, k, k)``) or
    ``(batch, out)`` for a linear layer (``h`` ``(batch, *shape)``, ``W`` and ``B``
    ``(out, prod(shape))``); ``b`` ``(C_out,)`` or ``(out,)``. Backward:
    ``layer.affine_backward`` with ``B``, i.e. ``(dh, dW, db)`` shaped like ``(h, W, b)``, with
    ``dh`` the transposed map of ``B`` (FA's error to the layer below, Lillicrap et al. 2016)
    and ``dW``, ``db`` the exact local gradients. ``layer`` is not differentiated.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, feedback, layer):  # noqa: D102 (autograd's protocol)
        ctx.save_for_backward(h, feedback)
        ctx.layer = layer
        return layer.pre(h)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        h, feedback = ctx.saved_tensors
        dh, dw, db = ctx.layer.affine_backward(grad, h, feedback, ctx.needs_input_grad[0])
        return dh, dw, db, None, None


@register_method("fa")
class FeedbackAlignment(Method):
    """Feedback alignment (Lillicrap et al. 2016) on an :class:`~methods.networks.MLP` or a CNN.

    Departures from the paper, with the reason:

    * ``B_l`` drawn with Nokland's scaling (one rule for FA and DFA), so that FA and DFA differ
      only in the feedback path.
    * Network and optimiser: the shared MLP and backprop's optimiser, so that FA and backprop
      differ only in ``B_l`` versus ``W_l^T``.

    Args:
        model: the MLP or the :class:`~methods.networks.CNN`.
        loss: task loss.
        optimizer: optimiser config.
        feedback: ``random`` (fixed random ``B_l``) or ``symmetric`` (``B_l = W_l``, i.e.
            backprop; a control).
        feedback_seed: seed of the random matrices, or ``None`` for the run's RNG stream.

    Raises:
        MethodConfigError: for a model that is neither an MLP nor a CNN, or an unknown
            ``feedback``.
    """

    def __init__(
        self,
        model: MLP | CNN,
        loss: Loss,
        optimizer: OptimizerConfig,
        feedback: Annotated[str, OneOf(*FEEDBACK)] = "random",
        feedback_seed: int | None = None,
    ) -> None:
        super().__init__(model, loss)
        self.require_model((MLP, CNN), ("mlp", "cnn"))
        self.feedback = feedback
        generator = torch.Generator()
        generator.manual_seed(
            feedback_seed if feedback_seed is not None else int(torch.randint(2**62, ()))
        )
        like = next(model.parameters())
        self.feedback_weights = [
            self._draw(shape, generator).to(like) for shape in self.feedback_shapes()
        ]
        self.optimizer = make_optimizer(model.parameters(), optimizer)

    @staticmethod
    def _draw(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        # rows for a matrix (n_out, n_in); C_out * k * k for a kernel (C_out, C_in, k, k).
        bound = 1.0 / math.sqrt(math.prod(shape) // shape[1])
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound

    def feedback_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of ``B_2 .. B_L``: those of ``W_2 .. W_L`` (matrices or conv kernels)."""
        if isinstance(self.model, CNN):
            return [tuple(layer.affine.weight.shape) for layer in self.model.layers[1:]]
        return [tuple(layer.weight.shape) for layer in self.model.layers[1:]]

    def backward_error(self, k: int, delta_above: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Error reaching hidden layer ``k`` (1-based) before ``f'``: ``delta_{k+1} B_{k+1}``."""
        feedback = (
            self.model.layers[k].weight.detach()
            if self.feedback == "symmetric"
            else self.feedback_weights[k - 1]
        )
        return delta_above @ feedback

    def conv_updates(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """:meth:`updates_and_loss` on the CNN: one backward pass, ``B_l`` in place of ``W_l``.

        Every layer's map is applied through :class:`_FeedbackAffine`, whose backward pass is
        the layer's own (:meth:`~methods.networks.cnn.ConvBlock.affine_backward`) with the
        feedback kernel carrying the error to the layer below; activations and poolings keep
        their exact local derivatives. One autograd pass over the whole network, as for
        backprop, instead of three per layer: the same kernels and values, bit for bit.
        """
        h = x
        for k, layer in enumerate(self.model.layers):
            weight = layer.affine.weight
            if k == 0 or self.feedback == "symmetric":
                feedback = weight.detach()  # the first layer sends no error below
            else:
                feedback = self.feedback_weights[k - 1]
            h = layer.after_affine(
                _FeedbackAffine.apply(h, weight, layer.affine.bias, feedback, layer)
            )
        loss = self.loss(h, y)
        grads = torch.autograd.grad(loss, self.model_parameters)
        return list(grads), h.detach(), loss.detach()

    def updates(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``[(dW_l, db_l)]`` for l = 1..L, flattened as ``[dW_1, db_1, ...]``, and the logits.

        The logits are ``(batch, classes)``, detached.
        """
        grads, logits, _ = self.updates_and_loss(x, y)
        return grads, logits

    def updates_and_loss(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """:meth:`updates` and the batch's loss (a 0-dim tensor), which the step reports."""
        if isinstance(self.model, CNN):
            return self.conv_updates(x, y)
        layers = self.model.layers
        activation = self.model.activation
        closed_form = has_closed_form(activation)
        h = [x.flatten(1)]
        hidden = []  # per hidden layer: (a, f(a)); a with a graph to f(a) without a closed form
        for k, layer in enumerate(layers, start=1):
            with torch.no_grad():  # the updates are built by hand: no graph to the weights
                a = layer(h[-1])
            if k == len(layers):
                logits = a
                break
            if closed_form:
                with torch.no_grad():
                    out = activation(a)
            else:
                out = activation(a.requires_grad_(True))
            hidden.append((a, out))
            h.append(out.detach())
        written_out = loss_and_output_grad(self.loss, logits, y)
        if written_out is None:
            logits.requires_grad_(True)
            loss = self.loss(logits, y)
            (e,) = torch.autograd.grad(loss, logits)
        else:
            loss, e = written_out
        deltas = [e]
        for k in range(len(layers) - 1, 0, -1):
            # delta_k = error * f'(a_k), by the kernel autograd runs for f's backward (from
            # f(a_k)), so that symmetric feedback gives backprop's values bit for bit.
            error = self.backward_error(k, deltas[0], e)
            a, out = hidden[k - 1]
            if closed_form:
                deltas.insert(0, activation_backward(activation, error, out))
            else:
                deltas.insert(0, torch.autograd.grad(out, a, error)[0])
        grads = []
        for delta, h_in in zip(deltas, h):
            grads += [delta.T @ h_in, delta.sum(dim=0)]
        return grads, logits.detach(), loss.detach()

    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write the feedback-alignment update of every layer into ``.grad``."""
        grads, logits, loss = self.updates_and_loss(x, y)
        for param, grad in zip(self.model_parameters, grads):
            param.grad = grad
        return self.loss.metrics(logits, y, loss)

    def artifacts(self) -> dict[str, Any]:
        """``{"feedback_weights.pt": [B_2, ...]}``: the fixed matrices, saved with the run."""
        return {"feedback_weights.pt": [b.cpu() for b in self.feedback_weights]}


@register_method("dfa")
class DirectFeedbackAlignment(FeedbackAlignment):
    """Direct feedback alignment (Nokland 2016): ``delta_l = (e D_l) * f'(a_l)``.

    ``D_l`` has shape ``(n_L, n_l)`` (output size by layer width). Options as
    :class:`FeedbackAlignment`; ``symmetric`` is not defined for DFA.

    Departure from the paper, with the reason: no dropout (Nokland's 1.45% MNIST error used
    it); the shared MLP and backprop's optimiser, so that DFA and backprop differ only in the
    error path.
    """

    def __init__(
        self,
        model: MLP | CNN,
        loss: Loss,
        optimizer: OptimizerConfig,
        # Symmetric feedback is not defined for DFA.
        feedback: Annotated[str, OneOf("random")] = "random",
        feedback_seed: int | None = None,
    ) -> None:
        super().__init__(model, loss, optimizer, feedback, feedback_seed)

    def feedback_shapes(self) -> list[tuple[int, int]]:
        """Shapes of ``D_1 .. D_{L-1}``: ``(n_L, n_l)`` for every hidden layer.

        ``n_l`` is the number of units of layer ``l``'s output (``C_l H_l W_l`` for a conv
        block).
        """
        if isinstance(self.model, CNN):
            widths = [math.prod(shape) for shape in self.model.hidden_shapes]
            return [(self.model.output_size, width) for width in widths]
        return [(self.model.output_size, width) for width in self.model.hidden_sizes]

    def conv_updates(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """:meth:`updates_and_loss` on the CNN: ``e D_l`` at each layer's output, local below.

        Each layer's output receives the output error through ``D_l`` (reshaped to
        ``(batch, C_l, H_l, W_l)``); one autograd pass through the layer alone (its pooling,
        activation and map, on its detached input) gives ``dW_l`` and ``db_l``.
        """
        layers = self.model.layers
        outputs = []
        h = x
        for layer in layers:
            h = layer(h.detach())  # a graph to this layer's parameters only
            outputs.append(h)
        loss = self.loss(h, y)
        (e,) = torch.autograd.grad(loss, h)
        grads = []
        for k, (layer, out) in enumerate(zip(layers, outputs), start=1):
            error = e if k == len(layers) else (e @ self.feedback_weights[k - 1]).reshape(out.shape)
            grads += torch.autograd.grad(out, list(layer.parameters()), error)
        return grads, h.detach(), loss.detach()

    def backward_error(self, k: int, delta_above: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``e D_k``: the output error sent straight to hidden layer ``k``."""
        return e @ self.feedback_weights[k - 1]
