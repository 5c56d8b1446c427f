"""The convolutional network shared by every method that supports images (``model=cnn``).

A stack of conv blocks (convolution, activation, optional pooling), then linear layers; the last
linear layer gives the logits. Like :class:`~methods.networks.MLP`, the network exposes its
layers explicitly (``model.layers``, one :class:`ConvBlock` or :class:`LinearBlock` each) because
layer-local rules need every layer's input, pre-activation and output:

* ``model.layers[i](h)``: layer ``i``'s output from its input (0-based);
* ``model.layers[i].forward_parts(h)``: its :class:`LayerParts` (pre-activation, activation,
  output and max-pooling switches); ``.pre(h)`` the pre-activation alone and
  ``.after_affine(a)`` the rest of the layer (activation, pooling) from it;
* ``model.layers[i].affine_with(h, weight)``: its convolution or linear map with another weight
  (a feedback kernel ``B`` in place of ``W``: :mod:`methods.feedback_alignment`), and
  ``.affine_backward(grad, h, weight)`` that map's backward pass with ``weight`` carrying the
  error to ``h``;
* ``model.forward_layers(x)``: every layer's output, as the MLP's.

The presets (``conf/model/cnn.yaml``, ``conf/model/cnn_vgg.yaml``) are the LeNet-like net and the
"simple VGG" of Ernoult et al. 2022 (code ernoult/scalingDTP, ``target_prop/networks/lenet.py``
and ``simple_vgg.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from methods.networks.mlp import ACTIVATIONS, INITS

# ELU is Ernoult et al.'s default activation for their conv nets.
CNN_ACTIVATIONS: dict[str, type[nn.Module]] = {**ACTIVATIONS, "elu": nn.ELU}
POOLS = ("max", "avg", "none")


class LayerParts(NamedTuple):
    """One layer's forward pass, piece by piece.

    Attributes:
        pre: the convolution's / linear map's output ``a`` (pre-activation).
        post: ``f(a)``, the activation (``a`` itself for the output layer).
        output: the layer's output: ``pool(f(a))`` for a pooled conv block, else ``post``.
        indices: the max-pooling switches (``F.max_pool2d(..., return_indices=True)``) for a
            max-pooled conv block, for max-unpooling; ``None`` otherwise.
    """

    pre: torch.Tensor
    post: torch.Tensor
    output: torch.Tensor
    indices: torch.Tensor | None


def _check_positive(key: str, values: Sequence[int]) -> None:
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"model.{key}: must be positive integers, got {list(values)}")


def pooled_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a pooling (or convolution) window along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


class ConvBlock(nn.Module):
    """``h -> pool(f(conv(h)))``: ``(batch, C_in, H, W) -> (batch, C_out, H', W')``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: square kernel side (3 or 5 in the presets), stride 1.
        padding: zero padding on each side.
        activation: a name of :data:`CNN_ACTIVATIONS`.
        pool: ``max``, ``avg`` or ``none``.
        pool_size: pooling window side.
        pool_stride: pooling stride.
        pool_padding: pooling padding (``-inf`` for max, zeros counted for avg, torch's rules).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int,
        activation: str,
        pool: str,
        pool_size: int,
        pool_stride: int,
        pool_padding: int,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding)
        self.activation = CNN_ACTIVATIONS[activation]()
        self.pool_kind = pool
        self.pool_args = (pool_size, pool_stride, pool_padding)
        if pool == "max":
            self.pool: nn.Module = nn.MaxPool2d(pool_size, pool_stride, pool_padding)
        elif pool == "avg":
            self.pool = nn.AvgPool2d(pool_size, pool_stride, pool_padding)
        else:
            self.pool = nn.Identity()

    @property
    def affine(self) -> nn.Conv2d:
        """The weighted map (its ``weight`` and ``bias`` are the block's parameters)."""
        return self.conv

    def affine_with(
        self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The convolution of ``h`` with another kernel ``weight`` (shaped like ``conv.weight``)."""
        return F.conv2d(h, weight, bias, self.conv.stride, self.conv.padding)

    def affine_backward(
        self, grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, input_grad: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The convolution's backward pass, with ``weight`` in place of ``W`` for the input's.

        Args:
            grad: ``(batch, C_out, H, W)``, an error at the pre-activation ``a = conv(h)``.
            h: the block's input ``(batch, C_in, H_in, W_in)``.
            weight: the kernel that carries ``grad`` to ``h``, shaped like ``conv.weight``
                (``conv.weight`` itself for backprop, a feedback kernel ``B`` for FA).
            input_grad: whether to compute ``dh`` (not needed below the first layer).

        Returns:
            ``(dh, dW, db)``: ``dh`` ``(batch, C_in, H_in, W_in)`` (``None`` without
            ``input_grad``) is ``d(affine_with(h, weight))/dh`` applied to ``grad``, the
            transposed convolution with ``weight``; ``dW`` and ``db`` are the gradients of
            ``conv(h)`` with respect to ``conv.weight`` and ``conv.bias``. One call of the kernel
            autograd runs for a convolution (``convolution_backward``, whose weight gradient
            reads the kernel's shape only), so every value is autograd's, bit for bit.
        """
        conv = self.conv
        return torch.ops.aten.convolution_backward(
            grad,
            h,
            weight,
            [conv.out_channels],
            conv.stride,
            conv.padding,
            conv.dilation,
            False,  # not a transposed convolution
            [0, 0],
            conv.groups,
            [input_grad, True, True],
        )

    def pre(self, h: torch.Tensor) -> torch.Tensor:
        """The pre-activation ``a = conv(h)`` ``(batch, C_out, H, W)``."""
        return self.conv(h)

    def after_affine(self, a: torch.Tensor) -> torch.Tensor:
        """The block's output from its pre-activation: ``pool(f(a))``."""
        return self.pool(self.activation(a))

    def forward_parts(self, h: torch.Tensor) -> LayerParts:
        """:class:`LayerParts` of ``h`` ``(batch, C_in, H, W)``, with max-pooling switches."""
        pre = self.conv(h)
        post = self.activation(pre)
        if self.pool_kind == "max":
            output, indices = F.max_pool2d(post, *self.pool_args, return_indices=True)
            return LayerParts(pre, post, output, indices)
        return LayerParts(pre, post, self.pool(post), None)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``pool(f(conv(h)))``."""
        return self.pool(self.activation(self.conv(h)))


class LinearBlock(nn.Module):
    """``h -> f(W flatten(h) + b)``: ``(batch, *shape) -> (batch, out_features)``.

    The output layer has no activation (``activation="identity"``): its output is the logits.

    Args:
        in_features: ``prod(shape)`` of the input.
        out_features: width.
        activation: a name of :data:`CNN_ACTIVATIONS`.
    """

    pool_kind = "none"

    def __init__(self, in_features: int, out_features: int, activation: str) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.activation = CNN_ACTIVATIONS[activation]()

    @property
    def affine(self) -> nn.Linear:
        """The weighted map (its ``weight`` and ``bias`` are the block's parameters)."""
        return self.linear

    def affine_with(
        self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``flatten(h) weight^T (+ bias)`` with another matrix shaped like ``linear.weight``."""
        return F.linear(h.flatten(1), weight, bias)

    def affine_backward(
        self, grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, input_grad: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The linear map's backward pass, with ``weight`` in place of ``W`` for the input's.

        Args:
            grad: ``(batch, out_features)``, an error at the pre-activation.
            h: the layer's input, ``(batch, in_features)`` or a conv block's output.
            weight: the matrix that carries ``grad`` to ``h``, shaped like ``linear.weight``
                ``(out_features, in_features)`` (a feedback matrix ``B`` for FA).
            input_grad: whether to compute ``dh``.

        Returns:
            ``(dh, dW, db)``: ``dh = grad weight`` shaped like ``h`` (``None`` without
            ``input_grad``), ``dW = grad^T flatten(h)`` ``(out_features, in_features)``,
            ``db = sum_n grad``. The products autograd's ``addmm`` backward runs for a
            contiguous ``linear.weight`` (``mm_mat1_backward``, ``mm_mat2_backward`` through
            the transpose), so every value is autograd's, bit for bit.
        """
        dh = grad.mm(weight).reshape(h.shape) if input_grad else None
        return dh, grad.t().mm(h.flatten(1)), grad.sum(0)

    def pre(self, h: torch.Tensor) -> torch.Tensor:
        """The pre-activation ``a = W flatten(h) + b`` ``(batch, out_features)``."""
        return self.linear(h.flatten(1))

    def after_affine(self, a: torch.Tensor) -> torch.Tensor:
        """The layer's output from its pre-activation: ``f(a)``."""
        return self.activation(a)

    def forward_parts(self, h: torch.Tensor) -> LayerParts:
        """:class:`LayerParts` of ``h`` (no pooling: ``output is post``)."""
        pre = self.linear(h.flatten(1))
        post = self.activation(pre)
        return LayerParts(pre, post, post, None)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``f(W flatten(h) + b)``."""
        return self.activation(self.linear(h.flatten(1)))


class CNN(nn.Module):
    """Conv blocks, then linear layers: ``x -> conv blocks -> flatten -> linear ... -> logits``.

    Every conv block is ``pool(f(conv(h)))`` with the same kernel, padding, activation and
    pooling; every hidden linear layer is ``f(W h + b)``; the output layer is linear.

    Args:
        input_shape: one example's shape ``(channels, height, width)``, e.g. ``(1, 28, 28)``.
        output_size: number of outputs (classes).
        channels: output channels of each conv block, e.g. ``[32, 64]``; non-empty.
        kernel_size: conv kernel side (stride 1).
        padding: conv zero padding; ``None`` keeps the size (``kernel_size // 2``).
        activation: a name of :data:`CNN_ACTIVATIONS` (``relu``, ``elu``, ``tanh``, ...).
        pool: ``max``, ``avg`` or ``none`` (after every conv block).
        pool_size: pooling window side.
        pool_stride: pooling stride; ``None`` for ``pool_size``.
        pool_padding: pooling padding (at most half the window, torch's rule).
        hidden_sizes: widths of the hidden linear layers after the conv blocks (may be empty).
        init: as :class:`~methods.networks.MLP`'s, applied to conv kernels and linear weights.

    Attributes:
        layers: ``nn.ModuleList`` of the conv blocks, the hidden linear layers and the output
            layer, in order; parameters are named ``layers.<i>.conv.*`` / ``layers.<i>.linear.*``.
        hidden_shapes: each hidden layer's output shape (all layers but the output), e.g.
            ``[(32, 14, 14), (64, 7, 7), (512,)]``.

    Raises:
        ValueError: naming the ``model.<key>`` at fault: inputs that are not images, bad sizes,
            unknown names, or an image that the blocks shrink to nothing.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        output_size: int,
        channels: Sequence[int],
        kernel_size: int = 5,
        padding: int | None = None,
        activation: str = "relu",
        pool: str = "max",
        pool_size: int = 2,
        pool_stride: int | None = None,
        pool_padding: int = 0,
        hidden_sizes: Sequence[int] = (),
        init: str = "default",
    ) -> None:
        super().__init__()
        input_shape, channels, hidden_sizes = tuple(input_shape), list(channels), list(hidden_sizes)
        if len(input_shape) != 3:
            raise ValueError(
                "model.input_shape: model=cnn needs images (channels, height, width); this "
                f"dataset gives inputs of shape {input_shape}"
            )
        if not channels:
            raise ValueError("model.channels: must list at least one conv block's channels")
        _check_positive("channels", channels)
        _check_positive("hidden_sizes", hidden_sizes)
        _check_positive("kernel_size", [kernel_size])
        _check_positive("pool_size", [pool_size])
        _check_positive("output_size", [output_size])
        padding = kernel_size // 2 if padding is None else padding
        pool_stride = pool_size if pool_stride is None else pool_stride
        _check_positive("pool_stride", [pool_stride])
        for key, value in (("padding", padding), ("pool_padding", pool_padding)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"model.{key}: must be an integer >= 0, got {value!r}")
        if pool != "none" and 2 * pool_padding > pool_size:
            raise ValueError(
                f"model.pool_padding: at most half of pool_size ({pool_size}), got {pool_padding}"
            )
        if activation not in CNN_ACTIVATIONS:
            raise ValueError(
                f"model.activation: unknown activation {activation!r}; "
                f"expected one of {', '.join(CNN_ACTIVATIONS)}"
            )
        if pool not in POOLS:
            raise ValueError(f"model.pool: must be one of {', '.join(POOLS)}, got {pool!r}")
        if init not in INITS:
            raise ValueError(f"model.init: unknown init {init!r}; expected one of {INITS}")
        self.input_shape = input_shape
        self.output_size = output_size
        self.channels = channels
        self.hidden_sizes = hidden_sizes
        self.kernel_size, self.padding = kernel_size, padding
        self.activation_name, self.init_name, self.pool_name = activation, init, pool
        layers: list[nn.Module] = []
        self.hidden_shapes: list[tuple[int, ...]] = []
        c, height, width = input_shape
        for index, out_channels in enumerate(channels, start=1):
            height, width = (pooled_size(s, kernel_size, 1, padding) for s in (height, width))
            if pool != "none":
                height, width = (
                    pooled_size(s, pool_size, pool_stride, pool_padding) for s in (height, width)
                )
            if height < 1 or width < 1:
                raise ValueError(
                    f"model.channels: the {input_shape[1]}x{input_shape[2]} input shrinks to "
                    f"nothing at conv block {index} of {len(channels)}; use fewer blocks, more "
                    "padding or less pooling"
                )
            layers.append(
                ConvBlock(
                    c,
                    out_channels,
                    kernel_size,
                    padding,
                    activation,
                    pool,
                    pool_size,
                    pool_stride,
                    pool_padding,
                )
            )
            c = out_channels
            self.hidden_shapes.append((c, height, width))
        features = c * height * width
        for size in hidden_sizes:
            layers.append(LinearBlock(features, size, activation))
            self.hidden_shapes.append((size,))
            features = size
        layers.append(LinearBlock(features, output_size, "identity"))
        self.layers = nn.ModuleList(layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)initialise every layer with the configured scheme, from torch's global RNG."""
        gain_name = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(
            self.activation_name, "linear"
        )
        for layer in self.layers:
            layer.affine.reset_parameters()
            if self.init_name == "default":
                continue
            weight = layer.affine.weight
            if self.init_name.startswith("kaiming"):
                relu_like = self.activation_name in ("relu", "elu")
                nonlinearity = "relu" if relu_like else "linear"
                getattr(nn.init, f"{self.init_name}_")(weight, nonlinearity=nonlinearity)
            else:
                gain = nn.init.calculate_gain(gain_name)
                getattr(nn.init, f"{self.init_name}_")(weight, gain=gain)
            nn.init.zeros_(layer.affine.bias)

    @property
    def depth(self) -> int:
        """Number of weighted layers (conv blocks + hidden linear layers + the output layer)."""
        return len(self.layers)

    @property
    def conv_depth(self) -> int:
        """Number of conv blocks (the first ``conv_depth`` entries of :attr:`layers`)."""
        return len(self.channels)

    def layer_forward(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s (0-based) output from its input ``h``: ``layers[index](h)``."""
        return self.layers[index](h)

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All layer outputs ``[h_1, ..., h_{L-1}, o]``: hidden outputs, then the logits.

        Args:
            x: ``(batch, *input_shape)``.
        """
        outputs = []
        h = x
        for layer in self.layers:
            h = layer(h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, *input_shape)`` to ``(batch, output_size)``."""
        return self.forward_layers(x)[-1]


def build_cnn(
    input_shape: Sequence[int],
    output_size: int,
    channels: Sequence[int],
    kernel_size: int = 5,
    padding: int | None = None,
    activation: str = "relu",
    pool: str = "max",
    pool_size: int = 2,
    pool_stride: int | None = None,
    pool_padding: int = 0,
    hidden_sizes: Sequence[int] = (),
    init: str = "default",
) -> CNN:
    """Build the shared CNN (see :class:`CNN`) for images of ``input_shape`` ``(C, H, W)``.

    The entry point of ``model=cnn`` and ``model=cnn_vgg``; the harness passes the dataset's
    ``input_shape`` and ``output_size``.

    Raises:
        ValueError: as :class:`CNN`, naming the ``model.<key>``.
    """
    return CNN(
        input_shape,
        output_size,
        channels,
        kernel_size=kernel_size,
        padding=padding,
        activation=activation,
        pool=pool,
        pool_size=pool_size,
        pool_stride=pool_stride,
        pool_padding=pool_padding,
        hidden_sizes=hidden_sizes,
        init=init,
    )
