"""``./dev arm64``: the arm64 build in an emulated Cortex-A72 (the Pi 4's core), against x86.

1. a Debian bookworm arm64 root with Debian's arm64 kernel (tests/system/rootfs.sh, cached);
2. wheels for aarch64 fetched on the host (``pip download --platform manylinux..._aarch64``)
   and this checkout's wheel, the COCO SSD model and the test images, copied into the image;
3. the wheels are installed into /opt/edge-agent/venv of the image on the host, through
   qemu-user (chroot): pip under full-system emulation took 27 min, under qemu-user minutes;
4. ``qemu-system-aarch64 -M virt -cpu cortex-a72`` boots it (TCG: no KVM for aarch64 here);
   the guest's only network is qemu's user-mode stack with ``restrict=on`` and one guestfwd,
   10.0.2.100:1883, whose every connection qemu hands to tests/system/relay.py, which relays it
   to the host broker on 127.0.0.1; the guest reaches nothing else;
5. inside, a one-shot unit runs deploy/install.sh (offline, from the wheels: it finds the venv
   and upgrades it, as on a board that has it already), then ``edge-agent run`` on the images
   (results to the host broker), then the unit under the VM's systemd (active (running),
   results), and powers off;
6. the same ``edge-agent run`` on this x86 host; detections must match per image by the rule
   of tests/system/compare.py: every detection clearly above the score threshold has a
   counterpart with the same label and IoU >= 0.9 (one to one); one within BAND_STEPS
   quantization steps of it may have a same-label counterpart with IoU >= 0.5 or none, and each
   such case is listed as a near-threshold difference (report.json and the summary). The
   emulated inference time is printed as a curiosity, not a Pi figure.

Run as root: ``./dev arm64`` (11 to 20 min on 2 cores, by load; the first run builds the
root, ~35 min more).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from edge_agent.runtime.interpreter import get_backend
from tests.broker import Mosquitto
from tests.conftest import REPO, SHARED_MODELS
from tests.e2e.agentproc import Inbox, subscribe
from tests.system.compare import BAND_STEPS, Det, compare_image, describe
from tests.system.machine import ROOTFS_SH, build_wheels

RELAY = Path(__file__).with_name("relay.py")

MODEL = "coco_ssd_mobilenet_v1_1.0_quant.tflite"
# every test image in ../shared/models/images (MANIFEST.md), in name order: both runs number
# them the same way, so frame N is the same image on both sides
IMAGES = tuple(sorted(p.name for p in (SHARED_MODELS / "images").glob("*")
                      if p.suffix.lower() in {".bmp", ".jpg", ".jpeg", ".png"}))
AARCH64 = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
           "manylinux_2_28_aarch64", "manylinux_2_31_aarch64", "manylinux_2_34_aarch64",
           "manylinux_2_35_aarch64"]
GUEST_BROKER = "10.0.2.100"
SCORE_THRESHOLD = 0.5

GUEST_SCRIPT = r"""#!/bin/sh
# runs once at boot in the arm64 VM (edge-agent-vmtest.service); output goes to the console
set -x
echo "VMTEST uname: $(uname -m) $(tr -d '\0' < /proc/device-tree/model 2>/dev/null)"
grep -m1 -i "cpu part" /proc/cpuinfo
echo "VMTEST network: $(ip -4 -o addr show scope global | awk '{print $2, $4}')"
python3 -c "import socket; socket.create_connection(('GUEST_BROKER', 1883), 30).close()" &&
  echo "VMTEST broker reachable" || echo "VMTEST broker NOT reachable"
T0=$(date +%s)
cd /root/edge-agent
deploy/install.sh --from /root/wheels/WHEEL --pip-args "--no-index --find-links /root/wheels"
echo "VMTEST install rc=$? in $(( $(date +%s) - T0 )) s"
V=/opt/edge-agent/venv/bin
$V/python -c "import ai_edge_litert, numpy, cv2; print('VMTEST versions', numpy.__version__,
  cv2.__version__)"
$V/edge-agent check-config -c /root/run.yaml; echo "VMTEST check-config rc=$?"
# the images source ends after reading the last image while its inference (tens of seconds
# per invoke under emulation) still runs: wait for every result on the broker, not for the log
$V/python - > /root/waiter.log 2>&1 <<'PY' &
import json, time
import paho.mqtt.client as mqtt
seen = set()
def on_message(c, u, m):
    seen.add(json.loads(m.payload)["frame"]["index"])
def on_subscribe(*a):
    open("/root/waiter.ready", "w").close()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vmtest-waiter")
c.on_message, c.on_subscribe = on_message, on_subscribe
c.on_connect = lambda c, *a: c.subscribe("edge-agent/arm64/results/coco", qos=1)
c.connect("GUEST_BROKER", 1883)
c.loop_start()
deadline = time.time() + 2400
while len(seen) < NIMAGES and time.time() < deadline:
    time.sleep(2)
c.loop_stop()
print(f"VMTEST results seen in the guest: {len(seen)} of NIMAGES")
PY
WAITER=$!
for i in $(seq 1 120); do [ -f /root/waiter.ready ] && break; sleep 2; done
timeout 3000 $V/edge-agent run -c /root/run.yaml > /root/run.log 2>&1 &
RUN=$!
wait $WAITER
cat /root/waiter.log
kill -TERM $RUN; wait $RUN; echo "VMTEST run rc=$?"
tail -n 30 /root/run.log
# the unit under this VM's systemd
# ProtectHome=yes hides /root from the service: its model and images live under /etc
cp /root/coco_ssd_mobilenet_v1_1.0_quant.tflite /root/coco_labels.txt /etc/edge-agent/models/
cp -r /root/images /etc/edge-agent/images
cp /root/unit.yaml /etc/edge-agent/config.yaml
chown root:edge-agent /etc/edge-agent/config.yaml; chmod 0640 /etc/edge-agent/config.yaml
# as in the nspawn test: a system call the filter denies kills the daemon (SIGSYS) instead of
# failing quietly with EPERM, so the aarch64 filter is checked too
mkdir -p /etc/systemd/system/edge-agent.service.d
printf '[Service]\nSystemCallErrorNumber=kill\n' \
  > /etc/systemd/system/edge-agent.service.d/50-test-fatal-seccomp.conf
systemctl daemon-reload
echo "VMTEST SystemCallErrorNumber: $(systemctl show -p SystemCallErrorNumber --value edge-agent)"
systemctl start edge-agent.service; echo "VMTEST unit start rc=$?"
sleep 60
systemctl status edge-agent.service --no-pager
systemctl show edge-agent.service -p ActiveState -p SubState -p NRestarts -p Result
echo "VMTEST unit state: $(systemctl is-active edge-agent.service)"
journalctl -u edge-agent --no-pager -n 40
echo "VMTEST sigsys lines: $(journalctl -u edge-agent --no-pager | grep -c -e SIGSYS -e status=31)"
systemctl stop edge-agent.service
echo "VMTEST done"
systemctl poweroff
"""

GUEST_UNIT = """[Unit]
Description=edge-agent arm64 system test (runs once, then powers off)
After=network-online.target
Wants=network-online.target systemd-networkd-wait-online.service

[Service]
Type=oneshot
ExecStart=/root/vmtest.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=3h

[Install]
WantedBy=multi-user.target
"""


def _binfmt_interpreter() -> tuple[Path, bool]:
    """qemu-user's aarch64 handler: its interpreter path, and whether the kernel opened it at
    registration (flag F; else it must exist inside the chroot)."""
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not entry.exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False,
                       capture_output=True)
    if not entry.exists() or "enabled" not in entry.read_text():
        raise SystemExit("arm64: binfmt_misc has no enabled qemu-aarch64 handler "
                         "(apt-get install qemu-user-static binfmt-support)")
    fields = dict(line.split(" ", 1) for line in entry.read_text().splitlines() if " " in line)
    return Path(fields["interpreter"].strip()), "F" in fields.get("flags:", "")


def _preinstall_venv(root: Path, wheel: Path) -> None:
    """Install the aarch64 wheels into the image's /opt/edge-agent/venv on this host through
    qemu-user (chroot), so install.sh in the VM finds them installed instead of spending half
    an hour of full-system emulation in pip."""
    interp, fixed = _binfmt_interpreter()
    copied = None
    if not fixed:
        copied = root / str(interp).lstrip("/")
        copied.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interp.resolve(), copied)
    mounts = [root / "proc", root / "dev"]
    subprocess.run(["mount", "-t", "proc", "proc", str(mounts[0])], check=True)
    subprocess.run(["mount", "--bind", "/dev", str(mounts[1])], check=True)
    try:
        env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"]
        venv = "/opt/edge-agent/venv"
        subprocess.run(["chroot", str(root), *env, "python3", "-m", "venv", venv], check=True)
        subprocess.run(["chroot", str(root), *env, f"{venv}/bin/python", "-m", "pip", "install",
                        "--quiet", "--disable-pip-version-check", "--no-index",
                        "--find-links", "/root/wheels", f"/root/wheels/{wheel.name}"],
                       check=True)
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)
        if copied is not None:
            copied.unlink(missing_ok=True)


def _config(device: str, broker: tuple[str, int], model: Path, labels: Path, images: Path,
            state: Path, fps: float | None = 0) -> dict[str, Any]:
    return {
        "device_id": device,
        "state_dir": str(state),
        "mqtt": {"host": broker[0], "port": broker[1]},
        "metrics": {"prometheus": {"enabled": False}},
        "updates": {"enabled": False},
        "pipelines": [{
            "name": "coco",
            "source": {"type": "images", "uri": str(images), "fps": fps},
            "model": {"path": str(model), "labels": str(labels), "decoder": "ssd",
                      "threads": 2},
            "score_threshold": SCORE_THRESHOLD,
            "privacy": {"redact_faces": False},
        }],
    }


def _by_frame(inbox: Inbox, device: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for r in inbox.json("/results/coco"):
        if r.get("device") == device:
            out.setdefault(r["frame"]["index"], r)
    return out


def _x86_run(work: Path, broker: Mosquitto, inbox: Inbox, images: Path) -> None:
    cfg = work / "x86.yaml"
    cfg.write_text(yaml.safe_dump(_config("x86", (broker.host, broker.port),
                                          SHARED_MODELS / MODEL, SHARED_MODELS / "coco_labels.txt",
                                          images, work / "x86-state")))
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_by_frame(inbox, "x86")) < len(IMAGES):
        time.sleep(0.5)
    proc.terminate()
    proc.wait(30)


def score_step(model: Path) -> float:
    """The quantization step of the scores the model's own NMS (TFLite_Detection_PostProcess)
    reads: its class-score input tensor's scale (1/256 for the COCO SSD). A model without that
    op or with float scores has no step: then the band is BAND_STEPS of 1/256, said aloud."""
    interp = get_backend().module.Interpreter(model_path=str(model))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    for op in interp._get_ops_details():  # LiteRT has no public listing of ops
        if op["op_name"] == "TFLite_Detection_PostProcess":
            scale = float(tensors[int(op["inputs"][1])]["quantization"][0])
            if scale > 0:
                return scale
    print(f"arm64: {model.name} has no quantized NMS score input; band in steps of 1/256")
    return 1 / 256


def _compare(x86: dict[int, dict[str, Any]], arm: dict[int, dict[str, Any]], threshold: float,
             step: float) -> tuple[list[str], list[dict[str, Any]]]:
    problems: list[str] = []
    near: list[dict[str, Any]] = []
    for idx in range(len(IMAGES)):
        a, b = x86.get(idx), arm.get(idx)
        if a is None or b is None:
            problems.append(f"{IMAGES[idx]}: missing result (x86 {a is not None}, "
                            f"arm64 {b is not None})")
            continue
        out = compare_image(IMAGES[idx], [Det.of(d) for d in a["detections"]],
                            [Det.of(d) for d in b["detections"]], threshold, step)
        problems += out.problems
        near += out.near_threshold
    return problems, near


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="keep the work folder here")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3 * 3600)
    ap.add_argument("--nice", type=int, default=10,
                    help="niceness added to qemu (10; 0 runs the VM at this process's priority)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("arm64: needs root (debootstrap, mkfs.ext4 -d of a root-owned tree)")
        return 2
    for tool in ("qemu-system-aarch64", "mkfs.ext4", "debootstrap"):
        if shutil.which(tool) is None:
            print(f"arm64: {tool} is missing (./dev arm64 installs qemu-system-arm, "
                  "qemu-user-static, binfmt-support, debootstrap, e2fsprogs)")
            return 2
    if not (SHARED_MODELS / MODEL).exists():
        print(f"arm64: ../shared/models/{MODEL} is not available")
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="edge-agent-arm64-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    t0 = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    subprocess.run([str(ROOTFS_SH), "arm64", str(root)], check=True)
    print(f"arm64: root ready after {time.monotonic() - t0:.0f} s")

    wheel = build_wheels(root / "root" / "wheels", platform=AARCH64)
    src = root / "root" / "edge-agent"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    images = root / "root" / "images"
    images.mkdir(parents=True)
    host_images = work / "images"
    host_images.mkdir(exist_ok=True)
    for i, name in enumerate(IMAGES):
        # numbered so both runs see the same order
        for d in (images, host_images):
            shutil.copy2(SHARED_MODELS / "images" / name, d / f"{i:02d}-{name}")
    for f in (MODEL, "coco_labels.txt"):
        shutil.copy2(SHARED_MODELS / f, root / "root" / f)
    t1 = time.monotonic()
    _preinstall_venv(root, wheel)
    print(f"arm64: wheels installed into the image's venv (qemu-user) in "
          f"{time.monotonic() - t1:.0f} s")

    broker = Mosquitto(work / "broker")
    broker.start()
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["edge-agent/#"], inbox)
    try:
        guest = (GUEST_BROKER, 1883)
        (root / "root" / "run.yaml").write_text(yaml.safe_dump(_config(
            "arm64", guest, Path("/root") / MODEL, Path("/root/coco_labels.txt"),
            Path("/root/images"), Path("/root/run-state"))))
        unit_cfg = _config("arm64-unit", guest, Path("/etc/edge-agent/models") / MODEL,
                           Path("/etc/edge-agent/models/coco_labels.txt"),
                           Path("/etc/edge-agent/images"),
                           Path("/var/lib/edge-agent"), fps=1)
        unit_cfg["pipelines"][0]["source"]["loop"] = True
        (root / "root" / "unit.yaml").write_text(yaml.safe_dump(unit_cfg))
        script = root / "root" / "vmtest.sh"
        script.write_text(GUEST_SCRIPT.replace("WHEEL", wheel.name)
                          .replace("GUEST_BROKER", GUEST_BROKER)
                          .replace("NIMAGES", str(len(IMAGES))))
        script.chmod(0o755)
        unit = root / "etc/systemd/system/edge-agent-vmtest.service"
        unit.write_text(GUEST_UNIT)
        (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True, exist_ok=True)
        link = root / "etc/systemd/system/multi-user.target.wants/edge-agent-vmtest.service"
        if not link.is_symlink():
            link.symlink_to("/etc/systemd/system/edge-agent-vmtest.service")
        kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
        initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
        shutil.copy2(kernel, work / "vmlinuz")
        shutil.copy2(initrd, work / "initrd.img")
        image = work / "disk.ext4"
        image.unlink(missing_ok=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(image),
                        "6G"], check=True)
        console = work / "console.log"
        cmd = ["nice", "-n", str(args.nice), "qemu-system-aarch64", "-M", "virt",
               "-cpu", "cortex-a72", "-smp", str(args.smp), "-m", "2048", "-nographic",
               "-no-reboot",
               "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyAMA0 panic=-1",
               "-drive", f"file={image},if=virtio,format=raw",
               # cmd: one relay per guest connection (the chardev form serves one, ever)
               "-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_BROKER}:1883-"
                          f"cmd:{sys.executable} {RELAY} {broker.port}",
               "-device", "virtio-net-pci,netdev=n0,romfile=",
               "-serial", f"file:{console}", "-monitor", "none", "-display", "none"]
        print("arm64: booting:", " ".join(cmd))
        t_boot = time.monotonic()
        vm = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=open(work / "qemu.err", "wb"))  # noqa: SIM115
        try:
            vm.wait(args.timeout)
        except subprocess.TimeoutExpired:
            vm.terminate()
            vm.wait(30)
            print(f"arm64: the VM did not finish in {args.timeout} s; see {console}")
        print(f"arm64: VM ran {time.monotonic() - t_boot:.0f} s (exit {vm.returncode})")

        _x86_run(work, broker, inbox, host_images)
        x86, arm = _by_frame(inbox, "x86"), _by_frame(inbox, "arm64")
        unit_results = sum(1 for r in inbox.json("/results/coco")
                           if r.get("device") == "arm64-unit")
        text = console.read_text(errors="replace")
        vm_lines = [line for line in text.splitlines() if "VMTEST" in line]
        report: dict[str, Any] = {
            "images": list(IMAGES),
            "x86": {i: [(d["label"], d["score"], d["box"]) for d in r["detections"]]
                    for i, r in x86.items()},
            "arm64": {i: [(d["label"], d["score"], d["box"]) for d in r["detections"]]
                      for i, r in arm.items()},
            "inference_ms_x86": [r["inference_ms"] for r in x86.values()],
            "inference_ms_arm64_emulated": [r["inference_ms"] for r in arm.values()],
            "unit_results": unit_results,
            "vm": vm_lines,
        }
        step = score_step(SHARED_MODELS / MODEL)
        problems, near = _compare(x86, arm, SCORE_THRESHOLD, step)
        report["near_threshold_rule"] = {
            "threshold": SCORE_THRESHOLD, "score_step": step, "band_steps": BAND_STEPS,
            "band": [SCORE_THRESHOLD, SCORE_THRESHOLD + BAND_STEPS * step]}
        report["near_threshold_differences"] = near
        matched = sum(1 for i in range(len(IMAGES))
                      if not any(p.startswith(f"{IMAGES[i]}:") for p in problems))
        report["images_matching"] = f"{matched} of {len(IMAGES)}"
        if unit_results <= 0:
            problems.append("the unit under the VM's systemd published no results")
        if not any("VMTEST unit state: active" in line for line in vm_lines):
            problems.append("the unit was not active (running) in the VM")
        if not any("VMTEST sigsys lines: 0" in line for line in vm_lines):
            problems.append("the unit's journal in the VM shows SIGSYS (or was not read)")
        if not any("VMTEST install rc=0" in line for line in vm_lines):
            problems.append("deploy/install.sh failed in the VM (or did not run)")
        report["problems"] = problems
        (work / "report.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        print(f"arm64: {matched} of {len(IMAGES)} images match x86 (confident detections: same "
              f"label, IoU >= 0.9, one to one; scores in [{SCORE_THRESHOLD}, "
              f"{SCORE_THRESHOLD + BAND_STEPS * step:.4f}] are near the threshold)")
        print(f"arm64: near-threshold differences: {len(near)}")
        for n in near:
            print(f"  {describe(n)}")
        for p in problems:
            print(f"arm64: problem: {p}")
        print(f"arm64: {'PASS' if not problems else 'FAIL'} after {time.monotonic() - t0:.0f} s;"
              f" work folder {work}")
        return 0 if not problems else 1
    finally:
        sub.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
