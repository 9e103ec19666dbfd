"""Synthetic scenes: moving shapes and person-like figures on a textured background, seeded.

:class:`SyntheticSource` is a frame source for demos and tests: frame ``n`` is a pure function
of ``(seed, n)``, so the same seed always gives identical frames. ``uri`` picks the scenario:
``shapes`` (rectangles and ellipses), ``people`` (person-like figures) or ``mixed`` (default).

:func:`write_clip` and :func:`write_crossing_clip` write video files with known ground truth
for the motion-gate and tracker tests and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import SyntheticSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.pacing import FramePacer, PacedFileSource
from edge_agent.types import Box

DEFAULT_SYNTHETIC_FPS = 10.0
SCENARIOS = ("mixed", "shapes", "people")
NOISE_FRAMES = 8  # sensor noise patterns, cycled (cheap and still deterministic)
PALETTE = ((40, 40, 220), (220, 70, 40), (40, 190, 40), (30, 200, 230), (200, 60, 200),
           (230, 200, 40), (20, 120, 250), (150, 90, 30))


@dataclass(frozen=True, slots=True)
class Sprite:
    """Something drawn into a scene: ``kind`` is rect, ellipse or person; size in pixels."""

    kind: str
    color: tuple[int, int, int]
    w: int
    h: int


def make_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A textured, muted background (H, W, 3) uint8 with a few static blocks on it."""
    cells = (max(2, height // 40), max(2, width // 40))
    # muted: a grey level per cell with a slight tint, so coloured objects stand out
    coarse = rng.uniform(70, 170, size=(*cells, 1)) + rng.uniform(-15, 15, size=(*cells, 3))
    bg = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 10, size=(height, width, 3)).astype(np.float32),
                            (3, 3), 0)
    out: np.ndarray = np.clip(bg + fine, 0, 255).astype(np.uint8)
    for _ in range(4):  # furniture: static, so never motion
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1 = x0 + int(rng.integers(width // 12, width // 4))
        y1 = y0 + int(rng.integers(height // 12, height // 4))
        shade = tuple(int(v) for v in rng.integers(60, 180, size=3))
        cv2.rectangle(out, (x0, y0), (x1, y1), shade, -1)
    return out


def make_noise(width: int, height: int, rng: np.random.Generator, level: float,
               count: int = NOISE_FRAMES) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sensor noise as (add, subtract) uint8 pairs, so applying it is two saturating ops."""
    out = []
    for _ in range(count):
        n = np.rint(rng.normal(0, level, size=(height, width, 3))).astype(np.int16)
        out.append((np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8)))
    return out


def draw_sprite(image: np.ndarray, sprite: Sprite, x: float, y: float) -> None:
    """Draw ``sprite`` with its top-left corner at pixel ``(x, y)`` into ``image``."""
    x0, y0, w, h = round(x), round(y), sprite.w, sprite.h
    if sprite.kind == "rect":
        cv2.rectangle(image, (x0, y0), (x0 + w - 1, y0 + h - 1), sprite.color, -1)
    elif sprite.kind == "ellipse":
        cv2.ellipse(image, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360,
                    sprite.color, -1)
    else:  # person: head, torso, two legs; clothing in the sprite's colour
        head = max(3, w // 4)
        cv2.circle(image, (x0 + w // 2, y0 + head), head, (120, 150, 200), -1)
        body_top, leg_top = y0 + 2 * head, y0 + 2 * head + (h - 2 * head) // 2
        cv2.rectangle(image, (x0, body_top), (x0 + w - 1, leg_top), sprite.color, -1)
        leg = max(2, w // 3)
        cv2.rectangle(image, (x0 + w // 2 - leg - 1, leg_top), (x0 + w // 2 - 2, y0 + h - 1),
                      sprite.color, -1)
        cv2.rectangle(image, (x0 + w // 2 + 1, leg_top), (x0 + w // 2 + leg, y0 + h - 1),
                      sprite.color, -1)


def sprite_box(sprite: Sprite, x: float, y: float, width: int, height: int) -> Box:
    """The sprite's box, normalised xyxy and clipped to the frame."""
    return (max(0.0, x / width), max(0.0, y / height),
            min(1.0, (x + sprite.w) / width), min(1.0, (y + sprite.h) / height))


def _bounce(p0: float, v: float, t: float, span: float) -> float:
    """Position at time ``t`` of a point moving at ``v`` from ``p0``, reflected in 0..span."""
    if span <= 0:
        return 0.0
    p = (p0 + v * t) % (2 * span)
    return p if p <= span else 2 * span - p


class SyntheticSource(PacedFileSource):
    """Moving coloured shapes (and person-like figures) on a textured background.

    Args:
        cfg: the synthetic config (width, height, seed, objects, frames, fps, loop; ``uri``
            is the scenario: mixed, shapes or people). ``fps`` None means 10 fps.

    Attributes:
        dropped: always 0.
        live: always False.
    """

    live = False
    bad_lines = 0  # no text lines: nothing malformed to skip

    def __init__(self, cfg: SyntheticSourceConfig) -> None:
        scenario = (cfg.uri or "mixed").removeprefix("synthetic:")
        if scenario not in SCENARIOS:
            raise SourceError(f"synthetic: unknown scenario {cfg.uri!r} (expected one of "
                              f"{', '.join(SCENARIOS)})")
        self.cfg = cfg
        self.scenario = scenario
        self.dropped = 0
        rng = np.random.default_rng(cfg.seed)
        w, h = cfg.width, cfg.height
        self.background = make_background(w, h, rng)
        self._noise = make_noise(w, h, rng, 2.0)
        self.sprites: list[tuple[Sprite, float, float, float, float]] = []
        for k in range(cfg.objects):
            kind = {"shapes": ("rect", "ellipse")[k % 2], "people": "person"}.get(
                scenario, ("person", "rect", "ellipse")[k % 3])
            color = PALETTE[int(rng.integers(len(PALETTE)))]
            if kind == "person":
                sh = int(h * rng.uniform(0.25, 0.45))
                sw = max(6, int(sh * 0.35))
            else:
                sw, sh = int(w * rng.uniform(0.06, 0.18)), int(h * rng.uniform(0.08, 0.22))
            sprite = Sprite(kind, color, sw, sh)
            x0, y0 = rng.uniform(0, w - sw), rng.uniform(0, h - sh)
            speed = rng.uniform(2.0, 8.0)  # pixels per frame
            angle = rng.uniform(0, 2 * np.pi)
            self.sprites.append((sprite, x0, y0, speed * np.cos(angle), speed * np.sin(angle)))
        self._init_pacing()
        self._open = False

    def positions(self, n: int) -> list[tuple[Sprite, float, float]]:
        """Where each sprite is in scene frame ``n``."""
        w, h = self.cfg.width, self.cfg.height
        return [(s, _bounce(x0, vx, n, w - s.w), _bounce(y0, vy, n, h - s.h))
                for s, x0, y0, vx, vy in self.sprites]

    def boxes(self, n: int) -> list[Box]:
        """Ground-truth boxes (normalised xyxy) of the sprites in scene frame ``n``."""
        return [sprite_box(s, x, y, self.cfg.width, self.cfg.height)
                for s, x, y in self.positions(n)]

    def render(self, n: int) -> np.ndarray:
        """Scene frame ``n`` as a fresh (H, W, 3) uint8 BGR image."""
        image: np.ndarray = self.background.copy()
        for sprite, x, y in self.positions(n):
            draw_sprite(image, sprite, x, y)
        add, sub = self._noise[n % len(self._noise)]
        cv2.add(image, add, dst=image)
        cv2.subtract(image, sub, dst=image)
        return image

    def open(self) -> None:
        """Start (or restart) the scene at frame 0."""
        self._closed.clear()
        rate = DEFAULT_SYNTHETIC_FPS if self.cfg.fps is None else self.cfg.fps
        self._pacer = FramePacer(rate, self._closed)
        self._pending = None
        self._open = True

    def _next_image(self) -> np.ndarray:
        """Scene frame ``_index`` (modulo ``frames`` when looping).

        Raises:
            SourceError: the source was never opened.
            EOFError: ``frames`` were produced (and ``loop`` is off).
        """
        if not self._open:
            raise SourceError("synthetic source is not open")
        n = self._index
        if self.cfg.frames is not None:
            if n >= self.cfg.frames and not self.cfg.loop:
                raise EOFError(f"synthetic source: all {self.cfg.frames} frames produced")
            n %= self.cfg.frames
        return self.render(n)

    def close(self) -> None:
        """Stop; safe to call twice."""
        self._closed.set()
        self._open = False


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True, slots=True)
class TruthTrack:
    """Ground truth of one object in a clip: its colour and its box in every frame."""

    object_id: int
    color: tuple[int, int, int]
    boxes: dict[int, Box] = field(default_factory=dict)


def _writer(path: Path, fourcc: str, fps: float, width: int, height: int) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write {path} with fourcc {fourcc!r}")
    return writer


def write_clip(path: str | Path, *, width: int = 640, height: int = 480, fps: float = 10,
               seconds: float, episodes: Sequence[tuple[float, float]], fourcc: str = "MJPG",
               seed: int = 0, noise: float = 2.0) -> list[tuple[int, int]]:
    """Write a mostly static clip in which objects move only during ``episodes``.

    Outside the episodes nothing moves (the scene only carries sensor noise and the codec's
    artefacts). During each episode one parked object (shapes and person-like figures, in
    turn) moves at 4-9 pixels per frame, bouncing off the edges, and parks where it ends up.

    Args:
        path: the file to write (``.avi`` for MJPG).
        seconds: clip length.
        episodes: ``(start_s, end_s)`` pairs, sorted and not overlapping.
        noise: standard deviation of the per-pixel sensor noise, in grey levels.

    Returns:
        The motion episodes as inclusive frame ranges ``(first, last)``: exactly the frames
        that differ from the previous one apart from noise.
    """
    n_frames = round(seconds * fps)
    ranges: list[tuple[int, int]] = []
    for start, end in episodes:
        f0 = round(start * fps)
        f1 = max(f0 + 1, round(end * fps))
        if f0 < 1 or f1 > n_frames or (ranges and f0 <= ranges[-1][1] + 1):
            raise ValueError(f"episode ({start}, {end}) is outside the clip, starts at frame 0, "
                             "or overlaps/touches the previous one")
        ranges.append((f0, f1 - 1))
    rng = np.random.default_rng(seed)
    background = make_background(width, height, rng)
    noises = make_noise(width, height, rng, noise)
    kinds = ("person", "rect", "ellipse")
    sprites: list[Sprite] = []
    parked: list[tuple[float, float]] = []  # where each object rests now
    for k in range(max(1, min(3, len(ranges)))):
        sh = int(height * rng.uniform(0.2, 0.35))
        sw = max(8, int(sh * 0.35)) if kinds[k] == "person" else int(width * 0.1)
        sprites.append(Sprite(kinds[k], PALETTE[k], sw, sh))
        parked.append((rng.uniform(0, width - sw), rng.uniform(0, height - sh)))
    # per episode: (object, first, last, start x, start y, vx, vy), positions chained
    initial = list(parked)
    moves: list[tuple[int, int, int, float, float, float, float]] = []
    for e, (f0, f1) in enumerate(ranges):
        k = e % len(sprites)
        s = sprites[k]
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(4.0, 9.0)
        vx = speed * np.cos(angle)
        vx = vx if abs(vx) >= 4.0 else float(np.copysign(4.0, vx))  # >= 4 px/frame: real
        vy = speed * np.sin(angle)
        x0, y0 = parked[k]
        moves.append((k, f0, f1, x0, y0, vx, vy))
        steps = f1 - f0 + 1
        parked[k] = (_bounce(x0, vx, steps, width - s.w), _bounce(y0, vy, steps, height - s.h))
    writer = _writer(Path(path), fourcc, fps, width, height)
    try:
        for n in range(n_frames):
            pos = list(initial)
            for k, f0, f1, x0, y0, vx, vy in moves:
                if n >= f0:
                    step = min(n, f1) - f0 + 1
                    s = sprites[k]
                    pos[k] = (_bounce(x0, vx, step, width - s.w),
                              _bounce(y0, vy, step, height - s.h))
            image = background.copy()
            for s, (x, y) in zip(sprites, pos, strict=True):
                draw_sprite(image, s, x, y)
            add, sub = noises[n % len(noises)]
            cv2.add(image, add, dst=image)
            cv2.subtract(image, sub, dst=image)
            writer.write(image)
    finally:
        writer.release()
    return ranges


def write_crossing_clip(path: str | Path, *, width: int = 640, height: int = 480,
                        fps: float = 10, seconds: float = 5.0, fourcc: str = "MJPG",
                        seed: int = 0, y_offset: float = 0.28) -> list[TruthTrack]:
    """Write a clip of two person-like figures walking towards each other and crossing.

    The figures (red and blue clothing, 0.4 of the frame tall) walk horizontally in opposite
    directions, the blue one ``y_offset`` (a fraction of the height) lower, so their boxes
    overlap in the middle of the clip; the blue one passes in front. Both stay inside the
    frame throughout.

    Returns:
        One :class:`TruthTrack` per figure, with its clothing colour (BGR) and its box in
        every frame.
    """
    n_frames = round(seconds * fps)
    rng = np.random.default_rng(seed)
    background = make_background(width, height, rng)
    noises = make_noise(width, height, rng, 2.0)
    sh = int(height * 0.4)
    sw = int(sh * 0.35)
    figures = [Sprite("person", (40, 40, 220), sw, sh), Sprite("person", (220, 70, 40), sw, sh)]
    left, right = width * 0.05, width * 0.95 - sw
    top = height * max(0.0, min(0.1, 0.6 - y_offset))
    low = min(top + height * y_offset, height - sh)
    starts = [(left, top), (right, low)]
    ends = [(right, top), (left, low)]
    truth = [TruthTrack(i + 1, f.color) for i, f in enumerate(figures)]
    writer = _writer(Path(path), fourcc, fps, width, height)
    try:
        for n in range(n_frames):
            a = n / max(1, n_frames - 1)
            image = background.copy()
            for fig, (x0, y0), (x1, y1), t in zip(figures, starts, ends, truth, strict=True):
                x, y = x0 + (x1 - x0) * a, y0 + (y1 - y0) * a
                draw_sprite(image, fig, x, y)
                t.boxes[n] = sprite_box(fig, x, y, width, height)
            add, sub = noises[n % len(noises)]
            cv2.add(image, add, dst=image)
            cv2.subtract(image, sub, dst=image)
            writer.write(image)
    finally:
        writer.release()
    return truth
