"""Build the configured decoder; ``auto`` picks one from the model's output signature.

``auto`` rules (first match wins):

* 4 outputs, one ``[1,N,4]`` and one ``[1]`` -> ``ssd`` (TFLite_Detection_PostProcess);
* 1 output ``[1,N,5+C]`` or ``[1,4+C,N]`` with N much larger than C -> ``yolo``;
* 2 outputs ``[1,A,16|12|4+2K]`` and ``[1,A,1]`` -> ``anchors`` (BlazeFace / BlazePose);
* 1 output ``[1,K]`` with K >= 2 -> ``classification``;
* anything else raises ModelError naming the decoder to set (usually ``raw``).
"""

from __future__ import annotations

from collections.abc import Mapping

from edge_agent.config import DecoderOptionsBase
from edge_agent.decoders.base import Decoder, describe_outputs, guess_decoder
from edge_agent.decoders.labels import Labels
from edge_agent.decoders.registry import DECODERS
from edge_agent.errors import ModelError
from edge_agent.types import ModelSignature

__all__ = ["create_decoder", "guess_decoder"]  # guess_decoder lives in base (no cycle)


def create_decoder(name: str, signature: ModelSignature, labels: Labels,
                   options: DecoderOptionsBase | Mapping[str, object] | None,
                   score_threshold: float) -> Decoder:
    """Construct decoder ``name`` (or the one ``auto`` picks) for a loaded model.

    Args:
        name: the config's ``model.decoder``: a registered kind or ``auto``.
        signature: the model's inputs and outputs.
        labels: the loaded label file (see :func:`edge_agent.decoders.labels.load_labels`).
        options: the config's ``model.decoder_options`` (under ``auto``, validated here by
            the chosen decoder's options class), or a plain mapping.
        score_threshold: the pipeline's ``score_threshold``.

    Raises:
        ModelError: ``auto`` cannot tell, or the decoder does not fit the model's outputs.
        ConfigError: a bad decoder option.
        PluginUnavailableError: an unknown decoder name.
    """
    kind = name
    if name == "auto":
        guess = guess_decoder(signature)
        if guess is None:
            raise ModelError(
                "decoder 'auto' cannot tell how to decode this model's outputs "
                f"({describe_outputs(signature.outputs)}); set model.decoder to one of: "
                f"{', '.join(k for k in DECODERS.kinds())} (raw publishes the dequantized "
                "first output)")
        kind = guess
    cls = DECODERS.get(kind)
    decoder: Decoder = cls(signature, labels, options, score_threshold)
    return decoder
