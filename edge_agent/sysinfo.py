"""What the board says about itself: CPU temperature, throttling, free disk, clock, model name.

Every function reads the kernel's own files (``/sys``, ``/proc``, ``/run``) and returns None when
the board does not expose the value, so callers (metrics, stats, doctor) need no per-board
branches. ``root`` lets tests point the functions at a fake tree.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Pi firmware's throttling bitmask (vcgencmd get_throttled): bit -> meaning
THROTTLE_BITS: dict[int, str] = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}

# thermal zone types that are the CPU (Pi: cpu-thermal, Jetson: CPU-therm, x86: x86_pkg_temp)
CPU_ZONE_HINTS = ("cpu", "x86_pkg", "soc", "k10temp", "coretemp")
_GET_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
_VCGENCMD_CACHE_S = 10.0
_vcgencmd_cache: tuple[float, int | None] = (0.0, None)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def cpu_temperature(root: Path = Path("/")) -> float | None:
    """The CPU temperature in degrees Celsius, or None when no thermal zone is readable
    (also when the folder cannot be listed, e.g. out of file descriptors: EMFILE)."""
    try:
        zones = sorted((root / "sys/class/thermal").glob("thermal_zone*"))
    except OSError:
        return None
    fallback: float | None = None
    for zone in zones:
        raw = _read(zone / "temp")
        if raw is None:
            continue
        try:
            celsius = int(raw) / 1000.0  # the kernel reports millidegrees
        except ValueError:
            continue
        kind = (_read(zone / "type") or "").lower()
        if any(hint in kind for hint in CPU_ZONE_HINTS):
            return celsius
        if fallback is None:
            fallback = celsius
    return fallback


def throttled(root: Path = Path("/"), *, use_vcgencmd: bool = True) -> int | None:
    """The Raspberry Pi firmware's throttling bitmask (see :data:`THROTTLE_BITS`), or None.

    Read from sysfs (Pi kernels expose ``get_throttled``), else from ``vcgencmd get_throttled``
    where it is installed (cached for a few seconds: it spawns a process).
    """
    raw = _read(root / _GET_THROTTLED)
    if raw is not None:
        try:
            return int(raw, 16)
        except ValueError:
            return None
    if not use_vcgencmd:
        return None
    return _vcgencmd_throttled()


def _vcgencmd_throttled() -> int | None:
    global _vcgencmd_cache
    now = time.monotonic()
    stamp, value = _vcgencmd_cache
    if stamp and now - stamp < _VCGENCMD_CACHE_S:
        return value
    value = None
    exe = shutil.which("vcgencmd")
    if exe is not None:
        try:
            out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True,
                                 timeout=2, check=False).stdout
            # "throttled=0x50000"
            value = int(out.strip().partition("=")[2], 16)
        except (OSError, ValueError, subprocess.SubprocessError):
            value = None
    _vcgencmd_cache = (now, value)
    return value


def describe_throttled(bits: int) -> list[str]:
    """The meanings of the set bits of a throttling mask, e.g. ``["under-voltage now"]``."""
    return [text for bit, text in THROTTLE_BITS.items() if bits & (1 << bit)]


@dataclass(frozen=True, slots=True)
class DiskSpace:
    """Free and total bytes of the file system holding a path."""

    free: int
    total: int

    @property
    def free_ratio(self) -> float:
        """Free space as a fraction of the total."""
        return self.free / self.total if self.total else 0.0


def disk_space(path: Path) -> DiskSpace | None:
    """Space on the file system of ``path`` (or of its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return None
    return DiskSpace(free=usage.free, total=usage.total)


def clock_synchronized(root: Path = Path("/")) -> bool | None:
    """Whether the system clock is NTP-synchronised; None when it cannot be told.

    ``systemd-timesyncd`` touches ``/run/systemd/timesync/synchronized`` once synced; otherwise
    ``timedatectl show`` answers (chrony and ntpd report through it as well).
    """
    if (root / "run/systemd/timesync/synchronized").exists():
        return True
    if root != Path("/"):
        return None
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    if out.returncode != 0 or value not in {"yes", "no"}:
        return None
    return value == "yes"


def board_model(root: Path = Path("/")) -> str | None:
    """The board's name from the device tree ("Raspberry Pi 5 Model B Rev 1.0"), or None."""
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        raw = _read(root / rel)
        if raw:
            return raw.rstrip("\0")
    return None


@dataclass(frozen=True, slots=True)
class VideoDevice:
    """A V4L2 device node and the driver's name for it."""

    path: Path
    name: str


def video_devices(root: Path = Path("/")) -> list[VideoDevice]:
    """The ``/dev/video*`` nodes, in numeric order, with their names from sysfs."""
    out: list[VideoDevice] = []
    for node in (root / "dev").glob("video*"):
        suffix = node.name[len("video"):]
        if not suffix.isdigit():
            continue
        name = _read(root / "sys/class/video4linux" / node.name / "name") or "?"
        out.append(VideoDevice(node, name))
    return sorted(out, key=lambda d: int(d.path.name[len("video"):]))


def usb_ids(root: Path = Path("/")) -> set[tuple[str, str]]:
    """``(vendor, product)`` hex ids of the connected USB devices, e.g. ``("18d1", "9302")``."""
    ids: set[tuple[str, str]] = set()
    for dev in (root / "sys/bus/usb/devices").glob("*"):
        vendor, product = _read(dev / "idVendor"), _read(dev / "idProduct")
        if vendor and product:
            ids.add((vendor.lower(), product.lower()))
    return ids


# V4L2 ioctls (linux/videodev2.h): _IOR('V', 0, v4l2_capability[104]),
# _IOWR('V', 2, v4l2_fmtdesc[64]), _IOWR('V', 74, v4l2_frmsizeenum[44])
_VIDIOC_QUERYCAP = 0x80685600
_VIDIOC_ENUM_FMT = 0xC0405602
_VIDIOC_ENUM_FRAMESIZES = 0xC02C564A
_V4L2_CAP_VIDEO_CAPTURE = 0x1
_V4L2_CAP_DEVICE_CAPS = 0x80000000
_V4L2_BUF_TYPE_VIDEO_CAPTURE = 1
_V4L2_FRMSIZE_TYPE_DISCRETE = 1


@dataclass(frozen=True, slots=True)
class VideoMode:
    """A pixel format a camera offers, with its discrete frame sizes (empty: stepwise)."""

    fourcc: str
    sizes: tuple[tuple[int, int], ...]


def v4l2_modes(path: Path, max_sizes: int = 8) -> list[VideoMode] | None:
    """The capture formats and frame sizes of a V4L2 node, or None when it is not a camera.

    Uses the V4L2 ioctls directly (cheap, no streaming). None also when the node cannot be
    opened or queried.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        cap = bytearray(104)
        fcntl.ioctl(fd, _VIDIOC_QUERYCAP, cap)
        caps, device_caps = struct.unpack_from("=II", cap, 84)
        if caps & _V4L2_CAP_DEVICE_CAPS:
            caps = device_caps
        if not caps & _V4L2_CAP_VIDEO_CAPTURE:
            return None  # a codec, metadata or output node (a Pi has several)
        modes: list[VideoMode] = []
        for index in range(64):
            desc = bytearray(struct.pack("=II", index, _V4L2_BUF_TYPE_VIDEO_CAPTURE) + bytes(56))
            try:
                fcntl.ioctl(fd, _VIDIOC_ENUM_FMT, desc)
            except OSError:
                break  # EINVAL: no more formats
            pixfmt = struct.unpack_from("=I", desc, 44)[0]
            fourcc = pixfmt.to_bytes(4, "little").decode("ascii", "replace").strip()
            sizes: list[tuple[int, int]] = []
            for n in range(max_sizes):
                frm = bytearray(struct.pack("=II", n, pixfmt) + bytes(36))
                try:
                    fcntl.ioctl(fd, _VIDIOC_ENUM_FRAMESIZES, frm)
                except OSError:
                    break
                kind, width, height = struct.unpack_from("=III", frm, 8)
                if kind != _V4L2_FRMSIZE_TYPE_DISCRETE:
                    break
                sizes.append((width, height))
            modes.append(VideoMode(fourcc, tuple(sizes)))
        return modes
    except OSError:
        return None
    finally:
        os.close(fd)


def describe_modes(modes: list[VideoMode]) -> str:
    """``"MJPG 1920x1080 1280x720; YUYV 640x480"``."""
    parts = []
    for m in modes:
        sizes = " ".join(f"{w}x{h}" for w, h in m.sizes) or "any size"
        parts.append(f"{m.fourcc} {sizes}")
    return "; ".join(parts) or "no capture formats"


def soc_name(root: Path = Path("/")) -> str | None:
    """The SoC or CPU name: the device tree's compatible string (ARM boards, e.g.
    ``brcm,bcm2712``), else ``/proc/cpuinfo``'s Hardware or model name line; None if unknown."""
    raw = _read(root / "proc/device-tree/compatible")
    if raw:
        parts = [p for p in raw.split("\0") if p]
        if parts:
            return parts[-1]
    info = _read(root / "proc/cpuinfo") or ""
    for key in ("Hardware", "model name"):
        for line in info.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return None


def memory_mb(root: Path = Path("/")) -> int | None:
    """Total memory in MiB from ``/proc/meminfo``, or None."""
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) // 1024
    return None
