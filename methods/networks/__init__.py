"""The networks every method trains, with the builders ``conf/model/*.yaml`` name as ``_target_``.

The MLP (``model=mlp``, :mod:`methods.networks.mlp`), the convolutional network (``model=cnn``
and ``model=cnn_vgg``, :mod:`methods.networks.cnn`) and the recurrent network (``model=rnn``,
:mod:`methods.networks.rnn`).

A network is plain torch: it knows nothing of the harness, and a method that needs a particular
kind checks it with :meth:`methods.base.Method.require_model`.
"""

from methods.networks.cnn import CNN, ConvBlock, LayerParts, LinearBlock, build_cnn
from methods.networks.mlp import ACTIVATIONS, MLP, build_mlp
from methods.networks.rnn import RecurrentNetwork, State, VanillaCell, build_rnn

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "ConvBlock",
    "LayerParts",
    "LinearBlock",
    "RecurrentNetwork",
    "State",
    "VanillaCell",
    "build_cnn",
    "build_mlp",
    "build_rnn",
]
