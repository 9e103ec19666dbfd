"""``./dev v4l2``: the camera source against a real V4L2 driver, in a VM of its own.

This machine's kernel has no media support (no /dev/video*, no modules), so the V4L2 tests
(tests/sources/test_v4l2_device.py) run in ``qemu-system-x86_64`` on Debian's own kernel with
its ``vivid`` test driver loaded, a real V4L2 capture device that speaks YUYV, NV12 and RGB:

1. Debian's ``linux-image-*-amd64`` and ``busybox-static`` packages (``apt-get download``,
   cached in ~/.cache/edge-agent/v4l2) give the kernel, the modules vivid and 9p need, and a
   shell; a small initramfs (written here) loads them;
2. the guest mounts this host's root file system over 9p (virtio) and chroots into it, so the
   tests run with this checkout and its venv, unchanged, with the guest's /dev/video0;
3. the guest runs pytest on the V4L2 tests with ``EDGE_AGENT_V4L2_DEVICE=/dev/video0``,
   writes pytest's exit code into a temp folder of the host, and powers off.

TCG (software emulation, ``-cpu max`` for the vector instructions numpy and OpenCV use): KVM
hangs in the kernel's start-up on this nested host. 2 to 4 minutes all told, by load. Needs
root (9p passthrough of ``/``) and qemu-system-x86 (the dev script installs it). The last pass
of ``.ci/run``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO

CACHE = Path(os.environ.get("EDGE_AGENT_V4L2_CACHE",
                            Path.home() / ".cache" / "edge-agent" / "v4l2"))
TESTS = "tests/sources/test_v4l2_device.py"
MODULES = ("kernel/drivers/media/test-drivers/vivid/vivid.ko", "kernel/fs/9p/9p.ko",
           "kernel/net/9p/9pnet_virtio.ko", "kernel/drivers/virtio/virtio_pci.ko")
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read m; do
  insmod "/lib/modules/$(uname -r)/$m" || echo "v4l2 guest: insmod $m failed"
done < /modlist
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 hostroot /host \\
  || echo "v4l2 guest: the host's root did not mount"
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
RUN=$(sed -n 's/.*edge_agent_run=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
echo "v4l2 guest: devices $(ls /dev/video* 2>/dev/null | tr '\\n' ' ')"
chroot /host /bin/sh "$RUN"
poweroff -f
"""


def _download(names: list[str], dest: Path) -> None:
    subprocess.run(["apt-get", "download", *names], cwd=dest, check=True,
                   capture_output=True)


def _image_package() -> str:
    """The versioned kernel package ``linux-image-amd64`` stands for (the package index is
    refreshed once if it does not know it)."""
    for attempt in range(2):
        deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                              capture_output=True, text=True).stdout
        for line in deps.splitlines():
            if line.strip().startswith("Depends: linux-image-"):
                return line.split()[-1]
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    raise SystemExit("v4l2: Debian's package index has no linux-image-amd64")


def _kernel() -> tuple[Path, Path]:
    """Debian's amd64 kernel and its unpacked modules (with modules.dep), cached."""
    done = CACHE / "kernel" / ".complete"
    root = CACHE / "kernel"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        _download([_image_package(), "busybox-static"], root)
        for deb in root.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "x")], check=True)
        release = next((root / "x" / "lib" / "modules").iterdir()).name
        subprocess.run(["depmod", "-b", str(root / "x"), release], check=True)
        done.touch()
    vmlinuz = next((root / "x" / "boot").glob("vmlinuz-*"))
    return vmlinuz, root / "x"


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of ``(path, mode, data)`` (directories have empty data)."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        pad()
        out.write(data)
        pad()
    return out.getvalue()


def initramfs(tree: Path, dest: Path) -> Path:
    """The guest's initramfs: busybox, the modules vivid and 9p need (in load order), init."""
    release = next((tree / "lib" / "modules").iterdir()).name
    mods = tree / "lib" / "modules" / release
    dep: dict[str, list[str]] = {}
    for line in (mods / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        dep[name] = rest.split()
    order: list[str] = []

    def add(mod: str) -> None:
        for d in reversed(dep[mod]):
            add(d)
        if mod not in order:
            order.append(mod)

    for mod in MODULES:
        add(mod)
    dirs = {"bin", "proc", "sys", "dev", "host", "lib"}
    files: list[tuple[str, int, bytes]] = [
        ("bin/busybox", stat.S_IFREG | 0o755, (tree / "bin" / "busybox").read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.encode()),
        ("modlist", stat.S_IFREG | 0o644, ("\n".join(order) + "\n").encode())]
    for mod in order:
        path = Path("lib/modules") / release / mod
        dirs.update(str(p) for p in path.parents if str(p) != ".")
        files.append((str(path), stat.S_IFREG | 0o644, (mods / mod).read_bytes()))
    entries = [(d, stat.S_IFDIR | 0o755, b"") for d in sorted(dirs)] + files
    dest.write_bytes(gzip.compress(_cpio(entries), compresslevel=1))
    return dest


def run(pytest_args: list[str], timeout: float) -> int:
    """Boot the guest, run the V4L2 tests in it; pytest's exit code (or 1 when the guest
    did not report one)."""
    if os.geteuid() != 0:
        print("v4l2: needs root (the guest mounts this host's / over 9p)", file=sys.stderr)
        return 2
    if os.uname().machine != "x86_64":
        print(f"v4l2: this runner boots an amd64 kernel and needs an x86_64 host, not "
              f"{os.uname().machine}", file=sys.stderr)
        return 2
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print("v4l2: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)",
              file=sys.stderr)
        return 2
    vmlinuz, tree = _kernel()
    with tempfile.TemporaryDirectory(prefix="edge-agent-v4l2-") as tmp:
        work = Path(tmp)
        initrd = initramfs(tree, work / "initrd.gz")
        rc_file = work / "rc"
        script = work / "run.sh"
        args = " ".join(f"'{a}'" for a in pytest_args)
        script.write_text(
            f"cd '{REPO}'\nexport HOME='{Path.home()}' EDGE_AGENT_V4L2_DEVICE=/dev/video0\n"
            f"'{sys.executable}' -m pytest -q -p no:cacheprovider --color=no -rs {TESTS} {args}\n"
            f"echo $? > '{rc_file}'\n")
        cmd = [qemu, "-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2",
               "-nographic", "-no-reboot", "-kernel", str(vmlinuz), "-initrd", str(initrd),
               "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,"
               "id=hostroot",
               "-append", f"console=ttyS0 quiet panic=-1 edge_agent_run={script}"]
        started = time.monotonic()
        print(f"v4l2: booting {vmlinuz.name} with vivid (TCG), tests: {TESTS}", flush=True)
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"v4l2: the guest did not finish within {timeout:.0f} s", file=sys.stderr)
            return 1
        took = time.monotonic() - started
        if not rc_file.exists():
            print(f"v4l2: the guest ended after {took:.0f} s without running the tests "
                  "(see its console above)", file=sys.stderr)
            return 1
        rc = int(rc_file.read_text().strip() or 1)
        print(f"v4l2: pytest in the guest exited {rc} after {took:.0f} s", flush=True)
        return rc


def main() -> int:
    parser = argparse.ArgumentParser(prog="./dev v4l2", description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds the guest may take in all")
    parser.add_argument("pytest_args", nargs="*", help="more arguments for pytest")
    opts = parser.parse_args()
    return run(opts.pytest_args, opts.timeout)


if __name__ == "__main__":
    sys.exit(main())
