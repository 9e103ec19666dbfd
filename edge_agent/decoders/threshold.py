"""Threshold events: a score or value crossing a level, with hysteresis (stateful).

One element of one output (option ``index``, flattened, default 0; ``output`` picks the
output tensor, default 0) is dequantised and compared with ``level`` (default: the
pipeline's ``score_threshold``):

- ``direction: above`` (default): the state turns *on* when the value reaches ``level``
  (``>=``) and back *off* when it falls below ``level - hysteresis``;
- ``direction: below``: *on* at ``value <= level``, *off* above ``level + hysteresis``.

Every result carries ``values``: the chosen output, dequantised and flattened (the same as
the ``raw`` decoder). On the window where the state flips (``emit: crossing``, the default)
it also carries one ``ClassScore(class_id=index, label=..., score=1.0)`` whose label is
``on_label`` (default: the label of ``index``, or ``"value"`` without labels) when it turned
on, and ``off_label`` (default ``"<on_label>_clear"``) when it turned off; other windows have
``classes`` None. With ``emit: state`` every result carries the current state that way,
which suits ``publish: on_change``. ``index`` may also be a label name (``index: yes``).
The state starts *off* and belongs to this decoder instance (one per pipeline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edge_agent.config import ThresholdOptions
from edge_agent.decoders.base import misfit, option_error, typed_options
from edge_agent.decoders.labels import Labels
from edge_agent.types import ClassScore, Inference, ModelSignature, Transform


class ThresholdDecoder:
    """Emits on/off events when one output value crosses a level (see the module docs).

    Attributes:
        active: whether the state is currently *on*.
        crossings: how many times the state flipped.
    """

    kind = "threshold"
    letterbox = False

    def __init__(self, signature: ModelSignature, labels: Labels,
                 options: ThresholdOptions | Mapping[str, object] | None,
                 score_threshold: float) -> None:
        """Read the options and check that the chosen output element exists.

        Raises:
            ModelError: no such output or index in the model.
            ConfigError: an unknown or bad option.
        """
        opts = typed_options(ThresholdOptions, options)
        self.output = opts.output
        self.level = float(score_threshold) if opts.level is None else opts.level
        self.hysteresis = opts.hysteresis
        self.direction = opts.direction
        self.emit = opts.emit
        on_label, off_label = opts.on_label, opts.off_label
        if self.output >= len(signature.outputs):
            raise misfit(self.kind, f"an output number {self.output} (decoder_options.output)",
                         signature)
        self.spec = signature.outputs[self.output]
        size = math.prod(self.spec.shape) if self.spec.shape else 1
        self.index = self._resolve_index(opts.index, labels)
        if self.index >= size:
            raise misfit(self.kind, f"an output with more than {self.index} values "
                         "(decoder_options.index)", signature)
        default_label = labels.get(self.index) if len(labels) else "value"
        self.on_label = str(on_label) if on_label is not None else default_label
        self.off_label = str(off_label) if off_label is not None else f"{self.on_label}_clear"
        self.active = False
        self.crossings = 0

    @classmethod
    def _resolve_index(cls, index: int | str, labels: Labels) -> int:
        """The element index: as given, or the label's (type and range: the options class)."""
        if isinstance(index, int):
            return index
        for i in range(len(labels)):
            if labels.get(i) == index:
                return i
        raise option_error(cls.kind, "index", f"no label {index!r} in the label file")

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """Update the state with this window's value (``transform`` is unused)."""
        flat = self.spec.dequantize(np.asarray(outputs[self.output])).reshape(-1)
        value = float(flat[self.index])
        was = self.active
        if self.direction == "above":
            if not was and value >= self.level:
                self.active = True
            elif was and value < self.level - self.hysteresis:
                self.active = False
        elif not was and value <= self.level:
            self.active = True
        elif was and value > self.level + self.hysteresis:
            self.active = False
        values = tuple(float(x) for x in flat)
        flipped = self.active != was
        if flipped:
            self.crossings += 1
        if not flipped and self.emit == "crossing":
            return Inference(values=values)
        label = self.on_label if self.active else self.off_label
        return Inference(values=values,
                         classes=(ClassScore(class_id=self.index, label=label, score=1.0),))
