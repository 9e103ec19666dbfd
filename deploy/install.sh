#!/usr/bin/env bash
# Install edge-agent as a systemd service on Raspberry Pi OS, Debian or Jetson (Ubuntu).
#
#   sudo deploy/install.sh                    install or upgrade from this checkout
#   sudo deploy/install.sh --from edge-agent  ... from PyPI (or --from FILE.whl)
#   sudo deploy/install.sh --with-mosquitto   also install a local MQTT broker
#   sudo deploy/install.sh --uninstall        remove; keeps config and state (--purge: all)
#   deploy/install.sh --root DIR              install into another root (an image, a test)
#   deploy/install.sh --dry-run               print what would be done
#
# Idempotent: run it again to upgrade. It never overwrites /etc/edge-agent/config.yaml.
# SERVICE.md explains each step and the sandbox.
set -euo pipefail

PREFIX=/opt/edge-agent
VENV=$PREFIX/venv
CONF_DIR=/etc/edge-agent
STATE_DIR=/var/lib/edge-agent
UNIT_DIR=/etc/systemd/system
SYSUSERS_DIR=/usr/lib/sysusers.d
SERVICE_USER=edge-agent
# groups that own the devices the agent may use; the user joins those the config needs (its
# sources and delegate: see needed_groups) and that exist:
# video (cameras, Coral PCIe on some kernels), plugdev (Coral USB), apex (Coral PCIe),
# gpio (/dev/gpiomem, gpiochips), i2c (/dev/i2c-*), dialout (serial sensors), render (GPU)
DEVICE_GROUPS="video plugdev apex gpio i2c dialout render"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

ROOT=""
FROM=""
PYTHON=${PYTHON:-python3}
RUNTIME=auto
PIP_ARGS=""
WITH_MOSQUITTO=0
UNINSTALL=0
PURGE=0
NO_VENV=0
NO_START=0
DRY_RUN=0
DEVICE_GROUPS_OVERRIDE=""

usage() {
  # the header comment (line 2 up to the first line that is not a comment), without "# "
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; cat <<'EOF'

Options:
  --root DIR         install under DIR (no systemctl; the user is made with systemd-sysusers
                     --root when DIR has an /etc/passwd)
  --from SRC         a source tree, a wheel, or a PyPI requirement (default: this checkout,
                     else "edge-agent" from PyPI)
  --python EXE       the interpreter for the venv (default python3; needs >= 3.10)
  --runtime R        auto | litert | tflite-runtime | none (default auto: LiteRT where it has
                     wheels, tflite-runtime with numpy<2 on 32-bit ARM)
  --pip-args ARGS    extra arguments for pip install (e.g. "--no-index --find-links DIR")
  --no-venv          do not create the venv or install the package
  --no-start         do not enable or (re)start the service
  --with-mosquitto   apt-get install mosquitto (a local broker)
  --uninstall        stop and remove the service and the venv; keep config and state
  --purge            with --uninstall: also remove config, state and the user
  --dry-run          print the commands instead of running them
  --device-groups G  the device groups to join, space-separated (default: those the config's
                     sources and delegate need, e.g. video for a V4L2 camera)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a folder}; shift ;;
    --root=*) ROOT=${1#*=} ;;
    --from) FROM=${2:?--from needs a path or requirement}; shift ;;
    --python) PYTHON=${2:?}; shift ;;
    --runtime) RUNTIME=${2:?}; shift ;;
    --pip-args) PIP_ARGS=${2-}; shift ;;
    --no-venv) NO_VENV=1 ;;
    --no-start) NO_START=1 ;;
    --with-mosquitto) WITH_MOSQUITTO=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --device-groups) DEVICE_GROUPS_OVERRIDE=${2-}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" = / ] && ROOT=""
fi
LIVE=1
[ -n "$ROOT" ] && LIVE=0

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
run() {
  if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

if [ "$LIVE" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0 $*), or use --root DIR / --dry-run"
fi

# ------------------------------------------------------------------ platform
detect_platform() {
  ARCH=$(uname -m)
  OS_ID=unknown; OS_VERSION=""
  if [ -r "$ROOT/etc/os-release" ]; then
    OS_ID=$(. "$ROOT/etc/os-release"; echo "${ID:-unknown}")
    OS_VERSION=$(. "$ROOT/etc/os-release"; echo "${VERSION_ID:-}")
  elif [ -r /etc/os-release ]; then
    OS_ID=$(. /etc/os-release; echo "${ID:-unknown}")
    OS_VERSION=$(. /etc/os-release; echo "${VERSION_ID:-}")
  fi
  BOARD=generic
  if [ -r /etc/nv_tegra_release ] || [ -e /sys/module/tegra_fuse ]; then
    BOARD=jetson
  elif [ -r /proc/device-tree/model ] && tr -d '\0' < /proc/device-tree/model |
      grep -qi "raspberry pi"; then
    BOARD=raspberrypi
  fi
  say "platform: $OS_ID $OS_VERSION, $ARCH, board $BOARD"
}

pick_runtime() {
  # ai-edge-litert publishes wheels for x86_64 and aarch64 (CPython 3.10-3.12 at the time of
  # writing); 32-bit Raspberry Pi OS (armv7l) gets tflite-runtime from piwheels, with numpy<2.
  if [ "$RUNTIME" != auto ]; then return; fi
  case "$ARCH" in
    x86_64|aarch64|arm64) RUNTIME=litert ;;
    armv7l|armv6l) RUNTIME=tflite-runtime ;;
    *) RUNTIME=litert; say "unknown architecture $ARCH: trying ai-edge-litert" ;;
  esac
}

check_python() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt-get install python3 python3-venv)"
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
    die "edge-agent needs Python >= 3.10; $PYTHON is $("$PYTHON" -V 2>&1). On Raspberry Pi OS
    use bookworm or later; on JetPack 5 (Ubuntu 20.04) install python3.10 and pass --python."
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
    { [ "$LIVE" = 1 ] && run apt-get install -y python3-venv; } ||
    die "the venv module is missing: apt-get install python3-venv"
}

# ------------------------------------------------------------------ package
package_spec() {
  local src=$FROM extras=""
  if [ -z "$src" ]; then
    if [ -f "$REPO/pyproject.toml" ]; then src=$REPO; else src=edge-agent; fi
  fi
  [ "$RUNTIME" = tflite-runtime ] && extras="[tflite-runtime]"
  echo "$src$extras"   # a folder, FILE.whl or a requirement name; pip takes [extra] on each
}

install_venv() {
  local venv=$ROOT$VENV spec
  spec=$(package_spec)
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the venv $venv"
    run "$PYTHON" -m venv "$venv"
  else
    say "upgrading the venv $venv"
  fi
  # shellcheck disable=SC2086 # PIP_ARGS is a list of arguments on purpose
  run "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    $PIP_ARGS "$spec"
  if [ "$RUNTIME" = none ]; then
    say "runtime: none requested (install ai-edge-litert or tflite-runtime yourself)"
  fi
  if [ "$LIVE" = 0 ] && [ "$DRY_RUN" = 0 ]; then
    # the venv was built at $ROOT/opt/...; make its scripts name the path it will run at
    grep -rlF "$venv" "$venv/bin" 2>/dev/null | while read -r f; do
      sed -i "s#$venv#$VENV#g" "$f"
    done
  fi
}

# ------------------------------------------------------------------ user
needed_groups() {
  # the device groups the configured sources and delegates need (the config in place, else the
  # example being installed); --device-groups overrides. Read by pattern, not by a YAML parser
  # (install.sh runs before the venv exists): a commented-out line does not count.
  if [ -n "$DEVICE_GROUPS_OVERRIDE" ]; then echo "$DEVICE_GROUPS_OVERRIDE"; return; fi
  local cfg=$ROOT$CONF_DIR/config.yaml text out=""
  [ -f "$cfg" ] || cfg=$REPO/deploy/config.example.yaml
  text=$(sed 's/#.*$//' "$cfg" 2>/dev/null)
  # cameras: /dev/videoN or a bare index (V4L2); libcamera's /dev/media*, Pi /dev/vchiq
  if echo "$text" | grep -Eq 'uri: *"?(/dev/video|/dev/media|[0-9]+ *[,}]|[0-9]+ *$)'; then
    out="$out video"
  fi
  # Coral: plugdev (USB), apex (PCIe); GPU delegates: render
  echo "$text" | grep -Eq 'delegate: *"?edgetpu|edgetpu' && out="$out plugdev apex"
  echo "$text" | grep -Eq 'libvx_delegate|gpu_delegate|/dev/dri' && out="$out render"
  # serial sensors, I2C buses, GPIO chips
  echo "$text" | grep -Eq '/dev/tty(USB|ACM|AMA|S)' && out="$out dialout"
  echo "$text" | grep -Eq '/dev/i2c' && out="$out i2c"
  echo "$text" | grep -Eq '/dev/gpio' && out="$out gpio"
  echo "$out"
}

existing_groups() {
  local g out=""
  for g in $(needed_groups); do
    case " $DEVICE_GROUPS " in *" $g "*) ;; *) continue ;; esac
    if [ -n "$ROOT" ]; then
      grep -q "^$g:" "$ROOT/etc/group" 2>/dev/null && out="$out $g"
    else
      getent group "$g" >/dev/null && out="$out $g"
    fi
  done
  echo "$out"
}

install_user() {
  local conf=$ROOT$SYSUSERS_DIR/edge-agent.conf groups g
  groups=$(existing_groups)
  run mkdir -p "$ROOT$SYSUSERS_DIR"
  if [ "$DRY_RUN" = 1 ]; then echo "+ write $conf"; else
    {
      echo "# edge-agent's system user (systemd-sysusers); written by deploy/install.sh"
      echo "u $SERVICE_USER - \"edge-agent inference daemon\" $STATE_DIR /usr/sbin/nologin"
      for g in $groups; do echo "m $SERVICE_USER $g"; done
    } > "$conf"
  fi
  if [ "$LIVE" = 1 ]; then
    if command -v systemd-sysusers >/dev/null; then
      run systemd-sysusers "$conf"
    elif ! id "$SERVICE_USER" >/dev/null 2>&1; then
      run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
      for g in $groups; do run usermod -aG "$g" "$SERVICE_USER"; done
    fi
  elif [ -f "$ROOT/etc/passwd" ] && command -v systemd-sysusers >/dev/null; then
    run systemd-sysusers --root="$ROOT" edge-agent.conf   # a name: looked up under --root
  else
    say "no $ROOT/etc/passwd: the user is created by systemd-sysusers at first boot"
  fi
  say "user $SERVICE_USER, device groups:${groups:- none found}"
}

# ------------------------------------------------------------------ files
install_files() {
  run install -d -m 0755 "$ROOT$UNIT_DIR" "$ROOT$PREFIX"
  run install -m 0644 "$REPO/systemd/edge-agent.service" "$ROOT$UNIT_DIR/edge-agent.service"
  board_dropin
  run install -d -m 0750 "$ROOT$CONF_DIR" "$ROOT$CONF_DIR/models"
  run install -m 0644 "$REPO/deploy/config.example.yaml" "$ROOT$CONF_DIR/config.yaml.example"
  if [ -e "$ROOT$CONF_DIR/config.yaml" ]; then
    say "keeping $CONF_DIR/config.yaml (the newest example is config.yaml.example)"
  else
    run install -m 0640 "$REPO/deploy/config.example.yaml" "$ROOT$CONF_DIR/config.yaml"
    FRESH_CONFIG=1
  fi
  run install -d -m 0700 "$ROOT$STATE_DIR"
  if [ "$LIVE" = 1 ]; then
    run chown -R "root:$SERVICE_USER" "$CONF_DIR"
    run chown "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
  elif [ -f "$ROOT/etc/passwd" ] && grep -q "^$SERVICE_USER:" "$ROOT/etc/passwd"; then
    local uid gid
    uid=$(awk -F: -v u="$SERVICE_USER" '$1 == u {print $3}' "$ROOT/etc/passwd")
    gid=$(awk -F: -v u="$SERVICE_USER" '$1 == u {print $4}' "$ROOT/etc/passwd")
    if [ "$(id -u)" = 0 ]; then
      run chown -R "0:$gid" "$ROOT$CONF_DIR"
      run chown "$uid:$gid" "$ROOT$STATE_DIR"
    fi
  fi
}

board_dropin() {
  # device nodes that the unit can only name by path, and only where they exist (Pi GPIO)
  local dir=$ROOT$UNIT_DIR/edge-agent.service.d n nodes=""
  [ "$LIVE" = 1 ] || return 0
  for n in /dev/gpiomem /dev/gpiomem0 /dev/gpiomem1 /dev/gpiomem2 /dev/gpiomem3 /dev/gpiomem4; do
    if [ -e "$n" ]; then nodes="$nodes $n"; fi
  done
  if [ -z "$nodes" ]; then run rm -f "$dir/10-board.conf"; return 0; fi
  run install -d -m 0755 "$dir"
  if [ "$DRY_RUN" = 1 ]; then echo "+ write $dir/10-board.conf:$nodes"; return 0; fi
  {
    echo "# written by deploy/install.sh for this board's device nodes; rewritten on upgrade"
    echo "[Service]"
    for n in $nodes; do echo "DeviceAllow=$n rw"; done
  } > "$dir/10-board.conf"
}

install_mosquitto() {
  if [ "$LIVE" = 0 ]; then say "--with-mosquitto: skipped under --root"; return; fi
  run apt-get update -qq
  run apt-get install -y --no-install-recommends mosquitto
  run systemctl enable --now mosquitto
}

start_service() {
  [ "$LIVE" = 1 ] || return 0
  run systemctl daemon-reload
  if [ "$NO_START" = 1 ]; then say "--no-start: not enabling the service"; return; fi
  run systemctl enable edge-agent.service
  if [ "${FRESH_CONFIG:-0}" = 1 ]; then
    say "edit $CONF_DIR/config.yaml (model, camera, broker), check it with"
    say "  $VENV/bin/edge-agent check-config -c $CONF_DIR/config.yaml"
    say "then: systemctl start edge-agent"
  elif [ "$NO_VENV" = 0 ] && [ "$DRY_RUN" = 0 ] &&
      ! "$VENV/bin/edge-agent" check-config -c "$CONF_DIR/config.yaml" --no-preflight; then
    say "the new version refuses $CONF_DIR/config.yaml (above); fix it, then"
    say "  systemctl restart edge-agent"
  elif systemctl is-active --quiet edge-agent.service; then
    run systemctl restart edge-agent.service
    say "restarted edge-agent (upgrade)"
  else
    run systemctl start edge-agent.service
  fi
}

# ------------------------------------------------------------------ uninstall
uninstall() {
  if [ "$LIVE" = 1 ]; then
    run systemctl disable --now edge-agent.service 2>/dev/null || true
  fi
  run rm -f "$ROOT$UNIT_DIR/edge-agent.service" "$ROOT$UNIT_DIR/edge-agent.service.d/10-board.conf"
  run rm -rf "$ROOT$PREFIX"
  if [ "$LIVE" = 1 ]; then run systemctl daemon-reload; fi
  if [ "$PURGE" = 1 ]; then
    # drop-ins (systemctl edit) are local configuration: kept unless purging
    run rm -rf "$ROOT$UNIT_DIR/edge-agent.service.d"
    run rm -rf "$ROOT$CONF_DIR" "$ROOT$STATE_DIR" "$ROOT/var/cache/edge-agent" \
      "$ROOT/var/log/edge-agent" "$ROOT/var/lib/private/edge-agent"
    run rm -f "$ROOT$SYSUSERS_DIR/edge-agent.conf"
    if [ "$LIVE" = 1 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
      run userdel "$SERVICE_USER" || true
    fi
    say "removed edge-agent, its config, state and user"
  else
    say "removed edge-agent; kept $CONF_DIR and $STATE_DIR (--purge removes them)"
  fi
}

# ------------------------------------------------------------------ main
if [ "$UNINSTALL" = 1 ]; then
  uninstall
  exit 0
fi
[ -f "$REPO/systemd/edge-agent.service" ] || die "run install.sh from an edge-agent checkout"
detect_platform
pick_runtime
install_user
install_files
if [ "$NO_VENV" = 0 ]; then
  check_python
  install_venv
else
  say "--no-venv: not installing the package"
fi
if [ "$WITH_MOSQUITTO" = 1 ]; then install_mosquitto; fi
start_service
say "done${ROOT:+ (into $ROOT)}"
