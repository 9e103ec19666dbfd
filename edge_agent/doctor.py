"""``edge-agent doctor``: what works on this device, and what to do about the rest.

Device checks always run (runtimes, delegates, cameras, board health, clock); with a config
(``-c FILE``, ``$EDGE_AGENT_CONFIG`` or /etc/edge-agent/config.yaml when present) each pipeline's
model, decoder and source, the broker with its TLS and credentials, and the state folder are
checked too. Every check is ``ok``, ``warn`` or ``fail`` with a one-line fix; the exit code is 1
when any check fails.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent import __version__, preflight, sysinfo
from edge_agent.config import DEFAULT_CONFIG_PATH, AgentConfig, PipelineConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.mqtt.connection import probe_broker
from edge_agent.preflight import FAIL, OK, WARN, Finding

# Coral USB: 1a6e:089a (Global Unichip) before its firmware is loaded, 18d1:9302 (Google) after
CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}
EDGETPU_LIBRARY = "libedgetpu.so.1"
NET_TIMEOUT_S = 5.0
MIN_FREE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's table."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------- device


def check_runtimes() -> list[Check]:
    """Which TFLite backends import, and their versions."""
    try:
        from edge_agent.runtime.interpreter import available_backends
    except ImportError as exc:
        return [Check("runtime", FAIL, f"cannot import edge_agent.runtime: {exc}",
                      "reinstall edge-agent")]
    found = [(n, v) for n, v, err in available_backends() if err is None]
    missing = [n for n, v, err in available_backends() if err is not None]
    if not found:
        return [Check("runtime", FAIL, "no TFLite backend imports",
                      "pip install ai-edge-litert (or 'edge-agent[tflite-runtime]' with numpy<2 "
                      "where LiteRT has no wheel)")]
    detail = ", ".join(f"{n} {v}" for n, v in found)
    if missing:
        detail += f" (not installed: {', '.join(missing)})"
    return [Check("runtime", OK, f"{detail}; python {platform.python_version()} "
                  f"{platform.machine()}")]


def _edgetpu_library() -> str | None:
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
        return EDGETPU_LIBRARY
    except OSError:
        return ctypes.util.find_library("edgetpu")


def check_delegates(wanted: bool, root: Path = Path("/")) -> list[Check]:
    """The Edge TPU: its library, PCIe devices (/dev/apex_*) and USB sticks."""
    lib = _edgetpu_library()
    apex = sorted((root / "dev").glob("apex_*"))
    usb = sysinfo.usb_ids(root) & CORAL_USB_IDS
    parts = [f"libedgetpu: {lib or 'not found'}",
             f"PCIe: {', '.join(str(a) for a in apex) or 'none'}",
             f"USB: {', '.join(':'.join(i) for i in sorted(usb)) or 'none'}"]
    detail = "; ".join(parts)
    if apex or usb:
        if lib is None:
            return [Check("edgetpu", FAIL if wanted else WARN, detail,
                          "install the Edge TPU runtime: apt install libedgetpu1-std "
                          "(Coral's apt repository)")]
        denied = [str(a) for a in apex if not os.access(a, os.R_OK | os.W_OK)]
        if denied:
            return [Check("edgetpu", WARN, f"{detail}; no access to {', '.join(denied)}",
                          "add the service user to the group owning the device (apex or video): "
                          "usermod -aG apex edge-agent")]
        return [Check("edgetpu", OK, detail)]
    if wanted:
        return [Check("edgetpu", FAIL, detail, "a pipeline asks for delegate: edgetpu but no "
                      "Coral is attached (plug it in, or set fallback_to_cpu: true)")]
    return [Check("edgetpu", OK, f"no Coral attached ({detail})")]


def _probe_camera(path: Path) -> str:
    try:
        import cv2
    except ImportError:
        return "OpenCV not installed"
    cap = cv2.VideoCapture(str(path), cv2.CAP_V4L2)
    try:
        if not cap.isOpened():
            return "not a capture device (or busy)"
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        code = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ")
        return f"opens at {w}x{h} {fps:.0f} fps {code}".strip()
    finally:
        cap.release()


def check_cameras(root: Path = Path("/"), probe: bool = True) -> list[Check]:
    """The V4L2 devices, and what OpenCV opens each at."""
    devices = sysinfo.video_devices(root)
    if not devices:
        return [Check("cameras", OK, "no /dev/video* devices")]
    checks: list[Check] = []
    for dev in devices:
        if not os.access(dev.path, os.R_OK | os.W_OK):
            checks.append(Check(f"camera {dev.path}", WARN, f"{dev.name}: no access",
                                "add the user to the video group: usermod -aG video edge-agent"))
            continue
        if not probe:
            checks.append(Check(f"camera {dev.path}", OK, f"{dev.name}: accessible"))
            continue
        modes = sysinfo.v4l2_modes(dev.path)
        if modes is None:
            checks.append(Check(f"camera {dev.path}", OK, f"{dev.name}: not a capture node"))
            continue
        checks.append(Check(f"camera {dev.path}", OK, f"{dev.name}: "
                            f"{_probe_camera(dev.path)}; modes {sysinfo.describe_modes(modes)}"))
    return checks


def check_board(root: Path = Path("/")) -> list[Check]:
    """Board name, CPU temperature and Pi throttling."""
    checks: list[Check] = []
    model = sysinfo.board_model(root) or platform.machine()
    temp = sysinfo.cpu_temperature(root)
    if temp is None:
        checks.append(Check("board", OK, f"{model}; no CPU temperature sensor"))
    elif temp >= 80:
        checks.append(Check("board", WARN, f"{model}; CPU at {temp:.1f} °C",
                            "add a heatsink or fan: above 80-85 °C the SoC throttles"))
    else:
        checks.append(Check("board", OK, f"{model}; CPU at {temp:.1f} °C"))
    bits = sysinfo.throttled(root, use_vcgencmd=root == Path("/"))
    if bits:
        now = bits & 0xF
        checks.append(Check("throttling", WARN, "; ".join(sysinfo.describe_throttled(bits)),
                            "use the official power supply (under-voltage) and cooling"
                            if now or bits & (1 << 16) else "check cooling"))
    return checks


def check_clock(root: Path = Path("/"), now: float | None = None) -> list[Check]:
    """A plausible year (TLS and signatures need it) and NTP synchronisation."""
    year = time.gmtime(now).tm_year
    if year < 2025:
        return [Check("clock", FAIL, f"the system clock says {year}",
                      "enable NTP (timedatectl set-ntp true) or add an RTC: TLS certificates "
                      "and update signatures are checked against the time")]
    synced = sysinfo.clock_synchronized(root)
    if synced is False:
        return [Check("clock", WARN, "not NTP-synchronised",
                      "timedatectl set-ntp true (and check network access to NTP)")]
    return [Check("clock", OK, "synchronised" if synced else f"year {year} (sync unknown)")]


# --------------------------------------------------------------------------- config


def _rows(found: list[Finding]) -> list[Check]:
    return [Check(f.name, f.status, f.detail, f.fix) for f in found]


def check_state_dir(config: AgentConfig) -> list[Check]:
    """state_dir writable (the preflight's check), and its free space."""
    checks = _rows(preflight.check_state_dir(config))
    if checks[0].status != OK:
        return checks
    d = config.state_dir
    space = sysinfo.disk_space(d)
    if space is not None:
        free_mb = space.free / 1e6
        detail = f"{free_mb:.0f} MB free of {space.total / 1e6:.0f} MB under {d}"
        if space.free < MIN_FREE_BYTES // 4:
            checks.append(Check("disk", FAIL, detail, "free space: models, the outbox and "
                                "updates need room (journalctl --vacuum-size=50M helps)"))
        elif space.free < MIN_FREE_BYTES or space.free_ratio < 0.05:
            checks.append(Check("disk", WARN, detail, "free some space before model updates"))
        else:
            checks.append(Check("disk", OK, detail))
    return checks


def check_pipeline(p: PipelineConfig, index: int = 0) -> list[Check]:
    """The model loads (each execution target on its own too), fits its decoder, and the
    source opens: the preflight's own checks."""
    return _rows(preflight.check_pipeline_model(p, index, each_target=True)
                 + preflight.check_source(p, index))


_BROKER_FIXES = {
    "unreachable": "check mqtt.host/port, that the broker runs, and the firewall",
    "tls": "check mqtt.tls.ca_certs signs the broker's certificate, the host name matches it, "
           "and the clock is right",
    "refused": "check mqtt.username and the password (mqtt.password_file, or the systemd "
               "credential mqtt-password under $CREDENTIALS_DIRECTORY)",
}


def check_broker(config: AgentConfig) -> list[Check]:
    """Connect as the agent does (its own client construction: protocol, TLS, credentials)."""
    m = config.mqtt
    target = f"{m.host}:{m.port}" + (" (TLS)" if m.tls.enabled else "")
    try:
        outcome, detail = probe_broker(config, NET_TIMEOUT_S)
    except ConfigError as exc:
        return [Check("broker", FAIL, "; ".join(exc.problems),
                      "make the password file and certificates readable by this user")]
    if outcome == "ok":
        return [Check("broker", OK, f"{target}: {detail}")]
    if outcome == "no_answer":
        return [Check("broker", WARN, f"{target} is reachable but sent {detail}",
                      "is this port an MQTT listener (1883 plain, 8883 TLS), and does the "
                      "broker speak mqtt.protocol?")]
    return [Check("broker", FAIL, f"{target}: {detail}", _BROKER_FIXES[outcome])]


# --------------------------------------------------------------------------- command


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    env = os.environ.get("EDGE_AGENT_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def run_checks(config_arg: str | None) -> list[Check]:
    """Every check, device first, then the config's."""
    checks: list[Check] = [Check("edge-agent", OK, f"version {__version__}")]
    config: AgentConfig | None = None
    path = _config_path(config_arg)
    if path is None:
        checks.append(Check("config", WARN, "no config (pass -c FILE); device checks only",
                            f"install.sh writes a commented one to {DEFAULT_CONFIG_PATH}"))
    else:
        try:
            config, _ = load_config(path)
            checks.append(Check("config", OK, f"{path}: {len(config.pipelines)} pipeline(s)"))
        except ConfigError as exc:
            checks.append(Check("config", FAIL, "; ".join(exc.problems),
                                f"fix the file (edge-agent check-config -c {path})"))
    wants_tpu = config is not None and any(p.model.delegate == "edgetpu"
                                           for p in config.pipelines)
    steps: list[Callable[[], list[Check]]] = [
        check_runtimes, lambda: check_delegates(wants_tpu), check_cameras, check_board,
        check_clock]
    if config is not None:
        cfg = config
        steps.append(lambda: check_state_dir(cfg))
        steps.append(lambda: _rows(preflight.check_files(cfg) + preflight.check_view(cfg)))
        steps.extend(functools.partial(check_pipeline, p, i)
                     for i, p in enumerate(cfg.pipelines))
        steps.append(lambda: check_broker(cfg))
    for step in steps:
        checks.extend(step())
    return checks


def render_table(checks: list[Check]) -> str:
    """The human-readable table, fixes indented under the rows that need them."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  -> {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append("")
    lines.append(f"{len(checks)} checks: {fails} failed, {warns} warnings")
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    """``edge-agent doctor [-c FILE] [--json]``: 0 when nothing fails, else 1."""
    checks = run_checks(getattr(args, "config", None))
    failed = any(c.status == FAIL for c in checks)
    if getattr(args, "json", False):
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(render_table(checks))
    sys.stdout.flush()
    return 1 if failed else 0
