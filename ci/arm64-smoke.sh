#!/usr/bin/env bash
# arm64 smoke job: the appliance's code on an emulated arm64 Debian bookworm (what Raspberry Pi OS
# Lite 64-bit is built on), compared with the same run on this x86 host. See docs/ARM64.md.
#
#   ci/arm64-smoke.sh                      the job (.ci/run calls it)
#   ci/arm64-smoke.sh --negative-control   only `models verify` under qemu's default CPU model,
#                                          which must FAIL (shows verify catches a bad runtime)
#
# Needs root (chroot, mounts), qemu-user-static registered with binfmt_misc (flag F, so the
# interpreter works inside the chroot) and, when no cached root exists, mmdebstrap. Without them it
# prints why and exits 0 (skipped). Caches rootfs, venv and wheels in $LFR_ARM64_CACHE
# (/var/cache/lfr-edge-arm64) when that directory exists, keyed by a hash of what goes in.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LFR_ARM64_CACHE:-/var/cache/lfr-edge-arm64}"
BUDGET_MIN="${LFR_ARM64_BUDGET_MIN:-25}"
# Pi 5 is a Cortex-A76; cortex-a72 is a Pi 4. qemu's default model ("max") makes XNNPACK's int8
# kernels compute garbage (0 faces instead of 50), so the model is always named.
CPU="${LFR_ARM64_CPU:-cortex-a76}"
FRAMES="${LFR_ARM64_FRAMES:-12}"
HOST_PY="${LFR_ARM64_HOST_PYTHON:-$REPO/.venv/bin/python}"
SUITE=bookworm
PACKAGES="python3,python3-venv,python3-pip,git,libgl1,libglib2.0-0,mosquitto,ca-certificates"
ROOTFS_FORMAT=1  # bump when the way the root is built changes
NEGATIVE=0
[ "${1:-}" = "--negative-control" ] && NEGATIVE=1

T0=$SECONDS
say() { printf '[arm64 %4ds] %s\n' $((SECONDS - T0)) "$*"; }
skip() { echo "arm64 smoke: SKIPPED: $*"; exit 0; }
die() { echo "arm64 smoke: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- can this machine do it?
[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" -eq 0 ] || skip "needs root for chroot and mounts (run as root, e.g. in CI)"
HOST_ARCH="$(uname -m)"
if [ "$HOST_ARCH" != aarch64 ]; then
  binfmt=/proc/sys/fs/binfmt_misc
  [ -e "$binfmt/status" ] || mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null || true
  if ! grep -qs '^enabled' "$binfmt/qemu-aarch64" && command -v apt-get >/dev/null; then
    say "installing qemu-user-static binfmt-support mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support mmdebstrap >/dev/null 2>&1 \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support mmdebstrap >/dev/null 2>&1; } \
      || true
    command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  fi
  grep -qs '^enabled' "$binfmt/qemu-aarch64" || skip "no binfmt_misc entry for aarch64 (qemu-user-static not installable or binfmt_misc not writable here)"
  # Without F the kernel looks the interpreter up inside the chroot, where it does not exist.
  grep -qs '^flags:.*F' "$binfmt/qemu-aarch64" || skip "the aarch64 binfmt entry lacks flag F (fix-binary); chroots cannot use it"
fi
[ -x "$HOST_PY" ] || skip "no host venv at $HOST_PY (run ./setup.sh --dev first)"

# ---------------------------------------------------------------- work area and cleanup
WORK="$(mktemp -d /tmp/lfr-arm64.XXXXXX)"
ROOT="$WORK/root"
MOUNTS=()
cleanup() {
  local rc=$?
  # Processes still running inside our chroot (a broker or run left by a failed step): ours alone,
  # since only this script chroots into $ROOT.
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill -9 "${p#/proc/}" 2>/dev/null || true
  done
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  if grep -qs " $ROOT" /proc/mounts; then
    echo "arm64 smoke: mounts left under $ROOT; not removing it:" >&2
    grep " $ROOT" /proc/mounts >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mnt() {  # mnt TARGET ARGS...: mount and remember, so cleanup unmounts in reverse order
  local target=$1
  shift
  mount "$@" "$target"
  MOUNTS+=("$target")
}

say "host $(uname -m), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), QEMU_CPU=$CPU"
caching=0
[ -d "$CACHE" ] && [ -w "$CACHE" ] && caching=1 && mkdir -p "$CACHE/wheels"

# ---------------------------------------------------------------- the arm64 root
SOURCES=""
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
  [ -s "$f" ] && { SOURCES=$f; break; }
done
rootfs_key="$( { echo "$ROOTFS_FORMAT $SUITE arm64 $PACKAGES"; [ -n "$SOURCES" ] && cat "$SOURCES"; } | sha256sum | cut -c1-16)"
rootfs_tar="$CACHE/rootfs-$SUITE-arm64-$rootfs_key.tar"
mkdir -p "$ROOT"
if [ -s "$rootfs_tar" ]; then
  say "rootfs: restoring cached $(basename "$rootfs_tar")"
  tar -C "$ROOT" -xf "$rootfs_tar"
else
  command -v mmdebstrap >/dev/null || skip "no cached root and no mmdebstrap to build one"
  say "rootfs: building with mmdebstrap (same Debian mirrors as the host's apt sources)"
  out="$WORK/rootfs.tar"
  mirror=()
  [ -n "$SOURCES" ] && mirror=("$SOURCES")
  mmdebstrap --quiet --architectures=arm64 --variant=apt --include="$PACKAGES" "$SUITE" "$out" "${mirror[@]}"
  tar -C "$ROOT" -xf "$out"
  if [ $caching -eq 1 ]; then mv "$out" "$rootfs_tar.tmp" && mv "$rootfs_tar.tmp" "$rootfs_tar"; else rm -f "$out"; fi
fi
for pkg in python3 python3-venv mosquitto libgl1; do
  grep -q "^Package: $pkg\$" "$ROOT/var/lib/dpkg/status" || die "the arm64 root lacks $pkg"
done

# ---------------------------------------------------------------- into the chroot
mnt "$ROOT/proc" -t proc proc
mnt "$ROOT/sys" -t sysfs sysfs
mnt "$ROOT/dev" --bind /dev
mnt "$ROOT/dev/shm" -t tmpfs tmpfs
# qemu-user passes the host's /proc/cpuinfo through: x86 lines crash XNNPACK's CPU detection in
# allocate_tensors. Show what the named CPU model would.
{
  for ((i = 0; i < $(nproc); i++)); do
    if [ "$CPU" = cortex-a72 ]; then
      printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
    else
      printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$i"
    fi
  done
} >"$WORK/cpuinfo"
mnt "$ROOT/proc/cpuinfo" --bind "$WORK/cpuinfo"
# The host's CA bundle and pip configuration: the package registries here may be local mirrors.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || true
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$ROOT/etc/xdg" && cp -r /etc/xdg/pip "$ROOT/etc/xdg/"
[ -f "$HOME/.config/pip/pip.conf" ] && mkdir -p "$ROOT/root/.config/pip" && cp "$HOME/.config/pip/pip.conf" "$ROOT/root/.config/pip/"
# Directories the pip configuration names (file:// indexes, find-links) are bind-mounted read-only
# at the same path, so the configuration means the same inside.
pipdirs="$( { cat /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" 2>/dev/null; env | grep '^PIP_'; } \
  | grep -o '\(file://\)\?/[^ ="]*' | sed 's|^file://||' | sort -u)"
for d in $pipdirs; do
  while [ -n "$d" ] && [ "$d" != / ] && [ ! -d "$d" ]; do d="$(dirname "$d")"; done
  # A PEP 503 index (…/simple) links to its files by relative paths outside it (../../files/…).
  [ "$(basename "$d")" = simple ] && d="$(dirname "$d")"
  case "$d" in /|/etc|/etc/*|/usr*|/proc*|/sys*|/dev*|/root|/tmp|"") continue ;; esac
  grep -qs " $ROOT$d " /proc/mounts && continue
  mkdir -p "$ROOT$d"
  mnt "$ROOT$d" --bind "$d" -o ro
done
mkdir -p "$ROOT/lfr/wheels" "$ROOT/lfr/src"
if [ $caching -eq 1 ]; then mnt "$ROOT/lfr/wheels" --bind "$CACHE/wheels"; fi
FACES="${LFR_EDGE_FACES:-/work/shared/data/faces}"
if [ -d "$FACES" ]; then mkdir -p "$ROOT/lfr/faces" && mnt "$ROOT/lfr/faces" --bind "$FACES" -o ro; fi
# The project as committed plus uncommitted files (what the host tests), without its .venv.
(cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -C "$ROOT/lfr/src" -xf -

in_root() {  # in_root [QEMU_CPU] CMD: a login-free shell in the chroot with a clean environment
  local qcpu=$1
  shift
  local envs=(PATH=/lfr/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 LFR_EDGE_FACES=/lfr/faces
              PYTHONDONTWRITEBYTECODE=1)
  [ -n "$qcpu" ] && envs+=("QEMU_CPU=$qcpu")
  while IFS= read -r v; do envs+=("$v"); done < <(env | grep '^PIP_' || true)
  env -i "${envs[@]}" chroot "$ROOT" /bin/bash -c "cd /lfr/src && $*"
}

# ---------------------------------------------------------------- the venv
"$HOST_PY" - "$REPO/pyproject.toml" >"$ROOT/lfr/requirements.txt" <<'EOF'
import sys, tomllib
doc = tomllib.load(open(sys.argv[1], "rb"))
p = doc["project"]
extras = p["optional-dependencies"]
want = list(p["dependencies"]) + extras["litert"] + [r for r in extras["test"] if r.split(">")[0] in ("pytest", "hypothesis")]
# The project is installed editable without build isolation: its build backend must be in the venv
# (bookworm's venv seeds setuptools 66, which cannot read a PEP 639 licence string).
want += doc["build-system"]["requires"]
print("\n".join(want))
EOF
venv_key="$( { echo "$rootfs_key"; cat "$ROOT/lfr/requirements.txt"; } | sha256sum | cut -c1-16)"
venv_tar="$CACHE/venv-$venv_key.tar"
if [ -s "$venv_tar" ]; then
  say "venv: restoring cached $(basename "$venv_tar")"
  tar -C "$ROOT/lfr" -xf "$venv_tar"
else
  say "venv: creating (wheels from $([ $caching -eq 1 ] && echo "the cache, then ")the registry)"
  in_root "$CPU" "python3 -m venv /lfr/venv \
    && { pip install -q --no-index --find-links /lfr/wheels -r /lfr/requirements.txt 2>/dev/null \
         || { pip download -q -d /lfr/wheels -r /lfr/requirements.txt \
              && pip install -q --no-index --find-links /lfr/wheels -r /lfr/requirements.txt; }; }"
  [ $caching -eq 1 ] && tar -C "$ROOT/lfr" -cf "$venv_tar.tmp" venv && mv "$venv_tar.tmp" "$venv_tar"
fi
# The project itself always from this checkout (editable, no dependencies: those are in the venv).
in_root "$CPU" "pip install -q --no-deps --no-build-isolation --no-index -e /lfr/src" >/dev/null
say "venv ready: $(in_root "$CPU" "python -c 'import platform, cv2, numpy; print(platform.machine(), \"opencv\", cv2.__version__, \"numpy\", numpy.__version__)'")"

if [ $NEGATIVE -eq 1 ]; then
  say "negative control: lfr-edge models verify under qemu's default CPU model (must fail)"
  set +e
  in_root "" "lfr-edge models verify"
  rc=$?
  set -e
  [ $rc -ne 0 ] || die "models verify passed under qemu's default CPU model: it does not catch a bad runtime"
  say "models verify refused the default CPU model's outputs (exit $rc), as it must"
  exit 0
fi

# ---------------------------------------------------------------- 1. golden values
say "lfr-edge models verify (golden inputs; values must match the manifest)"
in_root "$CPU" "lfr-edge models verify" || die "models verify failed on arm64 (QEMU_CPU=$CPU)"

# ---------------------------------------------------------------- 2. selected tests
say "pytest tests/test_detect.py tests/test_watchlist_bundle.py"
in_root "$CPU" "python -m pytest -q -p no:cacheprovider tests/test_detect.py tests/test_watchlist_bundle.py" \
  || die "tests failed on arm64"

# ---------------------------------------------------------------- 3. the same clip on both
PROBE="$WORK/probe"
mkdir -p "$PROBE"
say "clip of $FRAMES frames, keys and a watchlist (host)"
"$HOST_PY" "$REPO/tests/arm64_probe.py" prepare "$PROBE/in" --frames "$FRAMES"
cp -a "$PROBE/in" "$PROBE/x86"
cp -a "$PROBE/in" "$ROOT/lfr/probe"
say "x86: faces and embeddings, then lfr-edge run with Mosquitto"
"$HOST_PY" "$REPO/tests/arm64_probe.py" faces "$PROBE/x86" --out "$PROBE/x86/faces.json"
"$HOST_PY" "$REPO/tests/arm64_probe.py" alerts "$PROBE/x86" --out "$PROBE/x86/alerts.json"
say "arm64: faces and embeddings"
in_root "$CPU" "python tests/arm64_probe.py faces /lfr/probe --out /lfr/probe/faces.json"
say "arm64: lfr-edge run with Mosquitto inside the chroot"
in_root "$CPU" "python tests/arm64_probe.py alerts /lfr/probe --out /lfr/probe/alerts.json"
say "compare"
"$HOST_PY" "$REPO/tests/arm64_probe.py" compare "$PROBE/x86" "$ROOT/lfr/probe" \
  || die "arm64 and x86 disagree on the same clip"

took=$((SECONDS - T0))
say "load average now $(cut -d' ' -f1-3 /proc/loadavg)"
if [ $took -gt $((BUDGET_MIN * 60)) ]; then
  die "took $((took / 60)) min $((took % 60)) s, over the ${BUDGET_MIN}-minute budget"
fi
echo "arm64 smoke: PASSED in $((took / 60)) min $((took % 60)) s (budget ${BUDGET_MIN} min)"
