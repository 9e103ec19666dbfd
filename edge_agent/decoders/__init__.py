"""Decoders: pure numpy functions from output tensors to detections, classes or values.

Public entry points: :func:`create_decoder` (``auto`` picks from the output signature),
:func:`load_labels` / :class:`Labels`, and the :class:`Decoder` protocol every decoder follows.
The decoder classes themselves are imported lazily through
:data:`edge_agent.decoders.registry.DECODERS`.
"""

from edge_agent.decoders.base import Decoder, DecoderOptionsError, guess_decoder
from edge_agent.decoders.factory import create_decoder
from edge_agent.decoders.labels import Labels, load_labels

__all__ = ["Decoder", "DecoderOptionsError", "Labels", "create_decoder", "guess_decoder",
           "load_labels"]
