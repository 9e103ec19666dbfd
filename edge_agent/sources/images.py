"""Image folders and globs: every image in sorted order, paced, optionally looped."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import ImagesSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.conform import MAX_FRAME_PIXELS, image_file_pixels
from edge_agent.sources.encoded import EncodedImage
from edge_agent.sources.pacing import FramePacer, PacedFileSource

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".sr", ".ras"})
DEFAULT_IMAGES_FPS = 1.0  # an image folder has no frame rate of its own: a slide show


def list_images(uri: str) -> list[Path]:
    """The image files a folder or glob names, sorted by path.

    Args:
        uri: a folder (every file with an image suffix in it, not recursive) or a glob
            pattern (``frames/*.png``, ``shots/**/*.jpg``).

    Raises:
        SourceError: the folder does not exist, or nothing matches.
    """
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if any(ch in uri for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(uri, recursive=True) if Path(p).is_file())
        if not paths:
            raise SourceError(f"images: no file matches {uri!r} (check the pattern)")
        return paths
    folder = Path(uri)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise SourceError(f"images: folder {uri} does not exist (check the source uri)")
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SourceError(f"images: folder {uri} has no images (expected files ending in "
                          ".jpg, .png, .bmp, ...)")
    return paths


class ImageFolderSource(PacedFileSource):
    """Every image of a folder or glob in sorted order; unreadable images are skipped.

    Args:
        cfg: the images config (uri, fps, loop). ``fps`` None means one image per second.

    Attributes:
        dropped: always 0 (a file source never drops frames).
        live: always False.
        skipped: unreadable images skipped so far (each is logged once).
        loops: how many times the list restarted (``loop: true``).
        defer_decode: hand JPEG files over still encoded (``Frame.encoded``) so a motion gate
            can look at a DCT-scaled decode first; set by the pipeline when it has a gate.
    """

    live = False
    bad_lines = 0  # no text lines: nothing malformed to skip
    defer_decode = False

    def __init__(self, cfg: ImagesSourceConfig) -> None:
        self.cfg = cfg
        self.dropped = 0
        self.skipped = 0
        self.loops = 0
        self.paths: list[Path] = []
        self._bad: set[Path] = set()
        self._pos = 0
        self._readable_in_pass = 0
        self._init_pacing()
        self._open = False

    def __repr__(self) -> str:
        return f"ImageFolderSource({self.cfg.uri!r})"

    def open(self) -> None:
        """List the images (they are decoded one by one in read()).

        Raises:
            SourceError: the folder is missing or empty, or the glob matches nothing.
        """
        self.paths = list_images(self.cfg.uri)
        self._closed.clear()
        rate = DEFAULT_IMAGES_FPS if self.cfg.fps is None else self.cfg.fps
        self._pacer = FramePacer(rate, self._closed)
        self._pos = 0
        self._readable_in_pass = 0
        self._pending = None
        self._open = True
        logger.info("images %s: %d files", self.cfg.uri, len(self.paths))

    def _next_image(self) -> np.ndarray | EncodedImage:
        if not self._open:
            raise SourceError(f"images {self.cfg.uri!r} is not open")
        while True:
            if self._pos >= len(self.paths):
                if self._readable_in_pass == 0:
                    raise SourceError(f"images: none of the {len(self.paths)} files of "
                                      f"{self.cfg.uri} can be read as an image")
                if not self.cfg.loop:
                    raise EOFError(f"images {self.cfg.uri}: all {len(self.paths)} files read")
                self._pos = 0
                self._readable_in_pass = 0
                self.loops += 1
            path = self.paths[self._pos]
            self._pos += 1
            if path in self._bad:
                continue
            pixels = image_file_pixels(path)
            image = None
            why = "not a readable image"
            if pixels is not None and pixels > MAX_FRAME_PIXELS:
                why = f"{pixels / 1e6:.0f} megapixels, over the {MAX_FRAME_PIXELS // 10**6} limit"
            else:
                encoded = self._encoded(path) if self.defer_decode else None
                if encoded is not None:
                    self._readable_in_pass += 1
                    return encoded
                try:
                    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                except cv2.error as exc:  # e.g. over OpenCV's own size limit
                    why = f"OpenCV cannot decode it: {str(exc).strip().splitlines()[-1][:120]}"
            if image is None or image.size == 0:
                self._bad.add(path)
                self.skipped += 1
                logger.warning("images: skipping %s (%s)", path, why)
                continue
            self._readable_in_pass += 1
            return image

    @staticmethod
    def _encoded(path: Path) -> EncodedImage | None:
        """The file as an undecoded JPEG, or None (not a JPEG, unreadable: decoded as before,
        which reports the problem)."""
        if path.suffix.lower() not in {".jpg", ".jpeg"}:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return EncodedImage.jpeg(data)

    def close(self) -> None:
        """Forget the list. Safe to call twice."""
        self._closed.set()
        self._open = False
        self._pending = None
