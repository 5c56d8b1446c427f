"""Learned feedback (inverse) layers of the target-propagation family, for MLP and CNN layers.

Each module is the affine part ``V_i h + c_i`` of a feedback layer ``g_i: h_i -> h_{i-1}`` (the
method applies ``act_g`` after it), shaped like its forward layer's input, as in Ernoult et al.
2022's code (github.com/ernoult/scalingDTP, ``target_prop/backward_layers.py`` ``invert`` and
``target_prop/legacy/models.py`` ``layer_convpool.bb``):

* a linear layer ``f(W flatten(h) + b)``: a linear map back, reshaped to ``h``'s shape
  (:class:`LinearFeedback`);
* a conv block ``pool(f(conv(h)))``: max-unpooling with the *forward pass's switches* (the
  pooling indices), then the transposed convolution (:class:`ConvFeedback`). A transposed
  convolution with the forward kernel is the conv's exact transpose, which is what L-DRL learns.

Their conv inverse applies the activation between the unpooling and the transposed
convolution (``convT(rho(unpool(y)))``); here, as for every feedback layer of the harness, the
activation ``act_g`` comes after the affine part (``act_g(convT(unpool(y)) + c)``), so that
``dtp``, ``drl`` and ``ldrl`` share one form on both networks (``identity`` makes them equal
whenever ``rho`` is the identity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from methods.networks.cnn import ConvBlock, pooled_size


class LinearFeedback(nn.Linear):
    """``y -> reshape(V flatten(y) + c)``: ``(batch, *upper_shape) -> (batch, *lower_shape)``.

    Args:
        upper_shape: one example's shape of the forward layer's output ``h_i``.
        lower_shape: one example's shape of its input ``h_{i-1}`` (e.g. ``(C, H, W)`` after the
            last conv block, or ``(n,)``).
    """

    def __init__(self, upper_shape: Sequence[int], lower_shape: Sequence[int]) -> None:
        super().__init__(math.prod(upper_shape), math.prod(lower_shape))
        self.lower_shape = tuple(lower_shape)

    def forward(self, y: torch.Tensor, switches: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, *upper_shape) -> (batch, *lower_shape)``; ``switches`` is ignored."""
        return super().forward(y.flatten(1)).view(len(y), *self.lower_shape)


class ConvFeedback(nn.ConvTranspose2d):
    """``y -> convT(unpool(y, switches)) + c`` for a conv block ``pool(f(conv(h)))``.

    Shapes: ``(batch, C_out, H', W') -> (batch, C_in, H, W)``; the transposed convolution has
    the block's kernel size, stride and padding, and ``output_size`` fixes ``H, W`` exactly.

    Args:
        block: the forward conv block (its pooling must be ``max`` or ``none``).
        lower_shape: the block's input shape ``(C_in, H, W)``.

    Raises:
        ValueError: for an average-pooled block (no switches to unpool with).
    """

    def __init__(self, block: ConvBlock, lower_shape: Sequence[int]) -> None:
        conv = block.conv
        super().__init__(
            conv.out_channels,
            conv.in_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
        )
        if block.pool_kind not in ("max", "none"):
            raise ValueError(f"no feedback layer for {block.pool_kind!r} pooling")
        self.pool_kind, self.pool_args = block.pool_kind, block.pool_args
        self.lower_shape = tuple(lower_shape)
        kernel, padding = conv.kernel_size[0], conv.padding[0]
        self.conv_size = tuple(pooled_size(s, kernel, 1, padding) for s in self.lower_shape[1:])

    def forward(self, y: torch.Tensor, switches: torch.Tensor | None = None) -> torch.Tensor:
        """Unpool ``y`` with ``switches`` (max pooling) and apply the transposed convolution.

        Args:
            y: ``(batch, C_out, H', W')``.
            switches: the indices ``F.max_pool2d(..., return_indices=True)`` returned in the
                forward pass that produced the matching layer output; required for ``max``.
        """
        if self.pool_kind == "max":
            y = F.max_unpool2d(y, switches, *self.pool_args, output_size=self.conv_size)
        return super().forward(y, output_size=list(self.lower_shape[1:]))
