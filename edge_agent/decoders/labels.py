"""Label files: class id -> name, in the formats models ship with.

Accepted formats (detected per file):

* plain lines: line ``i`` names class ``i`` (``coco_labels.txt``, ``imagenet_labels.txt``);
* ``id label`` or ``id: label`` lines (every non-empty line starts with an integer id);
* ``n/a``, ``???`` or ``-`` name a gap (an id the model never emits); ``#`` starts a comment line;
* plain files end at the first empty line that is followed by more text (notes appended to a
  label list, as in the PASCAL VOC file, are not labels).

A first entry ``background`` / ``???`` / ``__background__`` is remembered as a background line,
so decoders can align the file with their outputs (:meth:`Labels.fit`). A file that cannot be
aligned with a model that says how many classes it has raises :class:`LabelsMismatchError`
(``check-config`` and start-up report it under ``model.labels``). At run time a class id the
file does not name is published as the id, counted and warned about once (:class:`Namer`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import ModelError

logger = logging.getLogger(__name__)

GAP_NAMES = frozenset({"n/a", "???", "-", ""})
BACKGROUND_NAMES = frozenset({"background", "???", "__background__", "bg"})
_ID_LINE = re.compile(r"^\s*(\d+)\s*[:\s,]\s*(.*?)\s*$")


class LabelsMismatchError(ModelError):
    """The label file does not fit the model (a different number of classes)."""


@dataclass(frozen=True, slots=True)
class Labels:
    """Class names by id; ``None`` marks a gap.

    Attributes:
        names: name of class ``i`` at position ``i`` (``None`` for gaps).
        source: where the labels came from, for messages.
    """

    names: tuple[str | None, ...] = ()
    source: str = "none"

    def get(self, class_id: int) -> str:
        """The name of ``class_id``, or the id as text when the file has none."""
        if 0 <= class_id < len(self.names):
            name = self.names[class_id]
            if name is not None:
                return name
        return str(class_id)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_background(self) -> bool:
        """Whether entry 0 is a background / placeholder line."""
        return bool(self.names) and (self.names[0] is None or
                                     self.names[0].lower() in BACKGROUND_NAMES)

    @property
    def count(self) -> int:
        """The number of real names (gaps not counted)."""
        return sum(1 for n in self.names if n is not None)

    def shifted(self, offset: int) -> Labels:
        """Labels where class ``i`` is entry ``i + offset`` of this file."""
        if offset >= 0:
            return Labels(self.names[offset:], self.source)
        return Labels((None,) * -offset + self.names, self.source)

    def compact(self) -> Labels:
        """Labels with gaps and a background line removed, renumbered from 0.

        This is how an 80-class COCO model (YOLO) reads the 90-id COCO file with ``n/a`` gaps.
        """
        names = self.names[1:] if self.has_background else self.names
        return Labels(tuple(n for n in names if n is not None), self.source)

    def fit(self, num_classes: int, *, offset: int | None = None,
            compact: bool | None = None) -> Labels:
        """Align the file with a model that emits class ids ``0..num_classes-1``.

        Args:
            num_classes: how many classes the model's output has (0: unknown).
            offset: explicit shift (config ``label_offset``); overrides the guess.
            compact: explicit ``labels_skip_na``; overrides the guess.

        Returns:
            Labels indexed by the model's class ids. Without explicit settings: the file as is
            when its length matches; shifted by one when it has one extra background line;
            compacted when its real names (no gaps, no background) number ``num_classes``.
        """
        labels = self
        if compact:
            labels = labels.compact()
        if offset is not None:
            return labels.shifted(offset)
        if compact is not None or not self.names or num_classes <= 0:
            return labels
        n = len(self.names)
        if n == num_classes:
            return self
        if n == num_classes + 1 and self.has_background:
            return self.shifted(1)
        compacted = self.compact()
        if len(compacted) == num_classes:
            return compacted
        few = "too few" if len(compacted) < num_classes else "too many"
        raise LabelsMismatchError(
            f"label file {self.source} does not fit the model: {n} entries ({len(compacted)} "
            f"names) for {num_classes} classes ({few}; use the model's own label file, or "
            "set decoder_options label_offset / labels_skip_na)")


NO_LABELS = Labels()


class Namer:
    """Class id -> the name a decoder publishes.

    With a label file, an id the file does not name (past its end, or a gap) is published as
    the id (``"17"``), never as a neighbour's name; each such id is warned about once and
    every occurrence is counted in :attr:`unlabeled`. Without a label file every id is its own
    name, silently (that is the documented behaviour).
    """

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.unlabeled = 0
        self._warned: set[int] = set()

    def __call__(self, class_id: int) -> str:
        names = self.labels.names
        if 0 <= class_id < len(names):
            name = names[class_id]
            if name is not None:
                return name
        if names:
            self.unlabeled += 1
            if class_id not in self._warned and len(self._warned) < 64:
                self._warned.add(class_id)
                logger.warning("the model emitted class %d, which label file %s does not name; "
                               "published as %r (counted in stats as unlabeled)", class_id,
                               self.labels.source, str(class_id))
        return str(class_id)


def parse_labels(lines: Sequence[str], source: str = "labels") -> Labels:
    """Parse the lines of a label file (see the module docstring for the formats)."""
    entries = [ln.strip() for ln in lines]
    entries = [e for e in entries if not e.startswith("#")]
    while entries and not entries[-1]:
        entries.pop()
    while entries and not entries[0]:
        entries.pop(0)
    content = [e for e in entries if e]
    if content and all(_ID_LINE.match(e) for e in content):
        by_id: dict[int, str | None] = {}
        for e in content:
            m = _ID_LINE.match(e)
            assert m is not None
            name = m.group(2).strip()
            by_id[int(m.group(1))] = None if name.lower() in GAP_NAMES else name
        size = max(by_id) + 1
        return Labels(tuple(by_id.get(i) for i in range(size)), source)
    if "" in entries:  # an empty line followed by prose: the list ended there
        entries = entries[:entries.index("")]
    return Labels(tuple(None if e.lower() in GAP_NAMES else e for e in entries), source)


def load_labels(path: str | Path | None) -> Labels:
    """Read a label file; ``None`` gives empty labels (names fall back to the class id).

    Raises:
        ModelError: the file cannot be read or decoded as UTF-8.
    """
    if path is None:
        return NO_LABELS
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read label file {p}: {exc}") from None
    return parse_labels(text.splitlines(), str(p))
