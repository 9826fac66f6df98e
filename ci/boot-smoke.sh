#!/usr/bin/env bash
# Boot-path smoke test: a Debian bookworm root with LFR Edge installed by ./setup.sh (appliance mode)
# boots under `systemd-nspawn --boot` with its config only on a simulated boot partition, and a real
# Mosquitto (TLS, passwords, ACL) plus the "router's" DNS on other addresses, reached over a veth
# between two network namespaces. It shows, from the outside:
#   1. provisioned   the boot-partition config moved to /etc/lfr-edge, the file gone from the boot dir
#   2. egress plan   the runtime drop-in names the broker, resolved by DNS at this start, and the resolver
#   3. started       lfr-edge.service active/running (Type=notify: only after READY=1)
#   4. watchdog      WatchdogTimestamp advancing (WATCHDOG=1 pings while frames are processed)
#   5. alert         the back-office listener receives, verifies and unseals a real alert
#   6. egress        from inside the service's cgroup: broker and DNS reachable, another host refused
#                    (while the same connect from outside that cgroup succeeds)
#   7. status        the status carries the clock field
#   8. late config   with the service stopped and no config, a file written to the boot partition
#                    makes lfr-edge.path start it (provisioned again)
#   9. broker moved  DNS answers a new address; after a restart the allow-list names it, not the old one,
#                    and the service connects again
# Usage: sudo ci/boot-smoke.sh          (exit 0 pass, 1 fail, 77 cannot run here: reason printed)
# Cache: $LFR_BOOT_CACHE (default /var/cache/lfr-edge-boot) keeps the base root (mmdebstrap, ~1 min),
# the installed root and pip's cache between runs; each run re-runs setup.sh (idempotent) on it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LFR_BOOT_CACHE:-/var/cache/lfr-edge-boot}"
VENV="${LFR_EDGE_VENV:-$HERE/.venv}"   # the host's dev venv: demo artefacts and the back-office listener
WORK="$CACHE/run"
ROOT="$CACHE/root"
NS_DEV=lfrboot-dev
NS_BRK=lfrboot-brk
DEV_IP=10.78.0.2 DNS_IP=10.78.0.1 BROKER_IP=10.78.0.3 OTHER_IP=10.78.0.4 MOVED_IP=10.78.0.5
BROKER_NAME=broker.lfr.test
DEVICE_ID=demo-van
WAIT_S="${LFR_BOOT_WAIT_S:-600}"

say() { echo "boot-smoke: $*"; }
skip() { echo "boot-smoke: SKIP: $*"; exit 77; }
fail() { echo "boot-smoke: FAIL: $*" >&2; dump; exit 1; }
pass() { echo "boot-smoke: PASS $*"; }
# Reads its whole input, unlike `grep -q`: under pipefail an early exit kills a long writer
# (journalctl, grep over a growing log) with SIGPIPE and fails a check whose text was there.
holds() { grep -c -e "$1" > /dev/null; }

# --- Can it run here? -------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "systemd-nspawn needs root"
# The Debian packages it needs, installed when missing (it runs as root anyway; CI starts clean).
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  say "apt: installing ${need[*]}"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
    > /dev/null 2>&1 || say "apt-get could not install ${need[*]}"
fi
for c in systemd-nspawn mmdebstrap mosquitto dnsmasq nsenter ip openssl; do
  command -v "$c" >/dev/null || [ -x "/usr/sbin/$c" ] \
    || skip "$c not installed (Debian packages systemd-container mmdebstrap mosquitto dnsmasq-base iproute2 openssl)"
done
[ -x "$VENV/bin/lfr-edge" ] || skip "no dev venv at $VENV (./setup.sh --dev)"
export PATH="$PATH:/usr/sbin:/sbin"

PIDS=()
NSPAWN_PID=""
LEADER=""
# Each boot gets a cgroup of its own, killed whole at the end. With --keep-unit the container lives
# in the caller's cgroup, so two boots (or one that outlived a killed run: SIGKILL of nspawn does not
# stop the container's systemd) would share /…/system.slice/lfr-edge.service, and the stale
# systemd's BPF firewall, still attached there, would refuse the new broker address.
UNIFIED=/sys/fs/cgroup/unified
[ -f "$UNIFIED/cgroup.procs" ] || UNIFIED=/sys/fs/cgroup
SELF_CG=$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
BOOT_CG_PARENT="$UNIFIED${SELF_CG%/}"
BOOT_CG="$BOOT_CG_PARENT/lfrboot-$$"
kill_cgroup() {  # every process in cgroup $1 (and below), then the cgroups themselves
  [ -d "$1" ] || return 0
  if [ -f "$1/cgroup.kill" ]; then echo 1 > "$1/cgroup.kill"
  else find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null; fi
  for _ in $(seq 50); do [ -z "$(find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break; sleep 0.1; done
  find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
}
# Boots left by an earlier run that was itself killed.
for stale in "$BOOT_CG_PARENT"/lfrboot-*; do [ -d "$stale" ] && kill_cgroup "$stale"; done
inside() { nsenter -t "$LEADER" -m -u -i -n -p -- "$@"; }
dump() {
  [ -n "$LEADER" ] || return 0
  inside journalctl -b --no-pager -u lfr-edge.service -u lfr-edge-egress.service -n 60 2>/dev/null | sed 's/^/  journal: /' >&2 || true
}
cleanup() {
  set +e
  if [ -n "$LEADER" ]; then
    inside journalctl -b --no-pager > "$WORK/journal.txt" 2>&1
  fi
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -RTMIN+3 "$NSPAWN_PID" 2>/dev/null   # nspawn forwards it: an orderly poweroff of the container
    for _ in $(seq 60); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null
  fi
  kill_cgroup "$BOOT_CG"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  ip netns del "$NS_DEV" 2>/dev/null
  ip netns del "$NS_BRK" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT

mkdir -p "$CACHE"
rm -rf "$WORK"
mkdir -p "$WORK"

# --- 1. Roots: base (mmdebstrap, cached) → installed (setup.sh, re-run each time) ---------------------
if [ ! -d "$CACHE/base" ]; then
  say "building the bookworm base root with mmdebstrap (cached in $CACHE/base)"
  rm -rf "$CACHE/base.tmp"
  mmdebstrap --variant=apt --include=systemd,systemd-sysv,systemd-timesyncd,dbus,python3,python3-venv,libgl1,libglib2.0-0,iproute2,ca-certificates,mosquitto-clients,procps \
    bookworm "$CACHE/base.tmp" > "$WORK/mmdebstrap.log" 2>&1 || { tail -20 "$WORK/mmdebstrap.log"; fail "mmdebstrap"; }
  mv "$CACHE/base.tmp" "$CACHE/base"
fi
if [ ! -d "$ROOT" ]; then
  cp -a "$CACHE/base" "$ROOT.tmp" && mv "$ROOT.tmp" "$ROOT"
fi
# The project as committed plus local changes, without the dev venv and caches.
rm -rf "$ROOT/usr/src/lfr-edge" && mkdir -p "$ROOT/usr/src/lfr-edge"
tar -C "$HERE" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' --exclude=./.mypy_cache \
  --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude='*.egg-info' -cf - . | tar -C "$ROOT/usr/src/lfr-edge" -xf -
# This machine's CA bundle and pip configuration (a local wheel cache and index may be configured).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
[ -d /etc/xdg/pip ] && { rm -rf "$ROOT/etc/xdg/pip"; mkdir -p "$ROOT/etc/xdg"; cp -r /etc/xdg/pip "$ROOT/etc/xdg/pip"; }
# root's own pip configuration too: the local indexes (extra-index-url) may be named only there.
[ -f "$HOME/.config/pip/pip.conf" ] && { mkdir -p "$ROOT/root/.config/pip"; cp "$HOME/.config/pip/pip.conf" "$ROOT/root/.config/pip/pip.conf"; }
binds=()
for d in /opt/wheels /opt/pypi /opt/pypi-more; do [ -d "$d" ] && binds+=("--bind-ro=$d"); done
mkdir -p "$CACHE/pip-cache"
pipenv=()
for v in $(env | grep -o '^PIP_[A-Z_]*' || true); do pipenv+=("--setenv=$v=${!v}"); done
say "installing LFR Edge in the root with ./setup.sh (appliance mode, not booted)"
systemd-nspawn -q -D "$ROOT" --register=no --keep-unit --resolv-conf=copy-host "${binds[@]}" "${pipenv[@]}" \
  --bind="$CACHE/pip-cache:/root/.cache/pip" --chdir=/usr/src/lfr-edge /bin/bash ./setup.sh \
  > "$WORK/setup.log" 2>&1 || { tail -30 "$WORK/setup.log"; fail "setup.sh inside the root"; }
grep -q "units installed and enabled" "$WORK/setup.log" || { cat "$WORK/setup.log"; fail "setup.sh did not enable the units"; }
for u in multi-user.target.wants/lfr-edge.service multi-user.target.wants/lfr-edge.path; do
  [ -L "$ROOT/etc/systemd/system/$u" ] || fail "setup.sh did not enable $u"
done
pass "setup.sh installed and enabled lfr-edge.service + lfr-edge.path ($(grep -o 'time: .*' "$WORK/setup.log" || echo 'no time wait'))"

# --- 2. A back office, a watchlist and a camera clip (the demo's real artefacts) ----------------------
"$VENV/bin/lfr-edge" demo --out "$WORK/demo" --no-console > "$WORK/demo.log" 2>&1 || { tail "$WORK/demo.log"; fail "lfr-edge demo"; }
D="$WORK/demo"
PKI="$WORK/pki"; mkdir -p "$PKI"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/broker.key" \
  -subj "/CN=$BROKER_NAME" -out "$PKI/broker.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,IP:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' \
  "$BROKER_NAME" "$BROKER_IP" > "$PKI/ext"
openssl x509 -req -in "$PKI/broker.csr" -CA "$D/broker/pki/lfr_edge_test_ca.crt" -CAkey "$D/broker/pki/lfr_edge_test_ca.key" \
  -CAcreateserial -days 1 -extfile "$PKI/ext" -out "$PKI/broker.crt" 2>/dev/null
cat > "$WORK/mosquitto.conf" <<EOF
per_listener_settings false
user root
log_dest file $WORK/mosquitto.log
log_type all
connection_messages true
persistence false
allow_anonymous false
password_file $D/broker/passwd
acl_file $D/broker/acl
listener 8883 $BROKER_IP
cafile $D/broker/pki/lfr_edge_test_ca.crt
certfile $PKI/broker.crt
keyfile $PKI/broker.key
# Where the broker "moves" to in step 9 (same name, new address).
listener 8883 $MOVED_IP
cafile $D/broker/pki/lfr_edge_test_ca.crt
certfile $PKI/broker.crt
keyfile $PKI/broker.key
EOF
cat > "$WORK/backoffice.yaml" <<EOF
brokers: [mqtts://$BROKER_IP:8883]
username: backoffice
password_file: $D/backoffice/mqtt.password
tls: {ca_file: $D/broker/pki/lfr_edge_test_ca.crt}
unseal_key: $D/backoffice/keys
devices:
  $DEVICE_ID: {public_key: $D/device/keys/device_ed25519.pub.pem}
EOF

# Into the root: the device keys the back office registered, trust anchors, the broker password, the clip.
SVC_UID=$(awk -F: '$1=="lfr-edge"{print $3}' "$ROOT/etc/passwd")
SVC_GID=$(awk -F: '$1=="lfr-edge"{print $4}' "$ROOT/etc/passwd")
[ -n "$SVC_UID" ] || fail "setup.sh created no lfr-edge user"
for f in device_ed25519.pem device_ed25519.pub.pem device_x25519.pem device_x25519.pub.pem; do
  install -m 0600 -o "$SVC_UID" -g "$SVC_GID" "$D/device/keys/$f" "$ROOT/etc/lfr-edge/keys/$f"
done
rm -f "$ROOT/etc/lfr-edge/keys/storage.key" "$ROOT/etc/lfr-edge/lfr-edge.yaml"
rm -rf "$ROOT/var/lib/lfr-edge/"*   # each run starts as a freshly flashed card
install -d -m 0750 -o 0 -g "$SVC_GID" "$ROOT/etc/lfr-edge/trust"
install -m 0640 -o 0 -g "$SVC_GID" "$D/broker/pki/lfr_edge_test_ca.crt" "$ROOT/etc/lfr-edge/trust/ca.crt"
install -m 0640 -o 0 -g "$SVC_GID" "$D/backoffice/keys/backoffice_ed25519.pub.pem" "$ROOT/etc/lfr-edge/trust/"
install -m 0640 -o 0 -g "$SVC_GID" "$D/backoffice/keys/backoffice_x25519.pub.pem" "$ROOT/etc/lfr-edge/trust/"
install -m 0600 -o "$SVC_UID" -g "$SVC_GID" "$D/device/mqtt.password" "$ROOT/etc/lfr-edge/mqtt.password"
install -d -m 0755 "$ROOT/opt/lfr-edge-smoke"
install -m 0644 "$D/street.mp4" "$ROOT/opt/lfr-edge-smoke/street.mp4"
# The router's DNS, as DHCP gives it on Raspberry Pi OS; the broker is named, not numbered.
rm -f "$ROOT/etc/resolv.conf"; echo "nameserver $DNS_IP" > "$ROOT/etc/resolv.conf"
# The simulated boot partition: the only place the config is.
mkdir -p "$WORK/bootfs"
cat > "$WORK/bootfs/lfr-edge.yaml" <<EOF
device:
  id: $DEVICE_ID
  location: boot smoke test
camera:
  source: file:/opt/lfr-edge-smoke/street.mp4
  loop: true
  realtime: true
watchlist:
  trusted_signers: [/etc/lfr-edge/trust/backoffice_ed25519.pub.pem]
mqtt:
  brokers: [mqtts://$BROKER_NAME:8883]
  username: $DEVICE_ID
  password_file: /etc/lfr-edge/mqtt.password
  tls: {ca_file: /etc/lfr-edge/trust/ca.crt}
  status_interval_s: 5
alerts:
  seal_to: /etc/lfr-edge/trust/backoffice_x25519.pub.pem
logging:
  level: INFO
EOF

# --- 3. Network: device ↔ veth ↔ broker host (broker, DNS and an unrelated host) ---------------------
ip netns del "$NS_DEV" 2>/dev/null || true
ip netns del "$NS_BRK" 2>/dev/null || true
ip netns add "$NS_DEV"; ip netns add "$NS_BRK"
ip link add lfrb-dev type veth peer name lfrb-brk
ip link set lfrb-dev netns "$NS_DEV"; ip link set lfrb-brk netns "$NS_BRK"
ip -n "$NS_DEV" addr add "$DEV_IP/24" dev lfrb-dev
for a in "$DNS_IP" "$BROKER_IP" "$OTHER_IP" "$MOVED_IP"; do ip -n "$NS_BRK" addr add "$a/24" dev lfrb-brk; done
for ns in "$NS_DEV" "$NS_BRK"; do ip -n "$ns" link set lo up; done
ip -n "$NS_DEV" link set lfrb-dev up; ip -n "$NS_BRK" link set lfrb-brk up
ip -n "$NS_DEV" route add default via "$DNS_IP"

ip netns exec "$NS_BRK" mosquitto -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.out" 2>&1 & PIDS+=($!)
dns() {  # $1: the address the router's DNS gives for the broker's name
  ip netns exec "$NS_BRK" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address="$DNS_IP" --address="/$BROKER_NAME/$1" --pid-file="$WORK/dnsmasq.pid" \
    --log-queries --log-facility="$WORK/dnsmasq.log" & DNS_PID=$!; PIDS+=($DNS_PID)
}
dns "$BROKER_IP"
ip netns exec "$NS_BRK" "$VENV/bin/python" -m http.server 8080 --bind "$OTHER_IP" > "$WORK/other.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do grep -q "Opening ipv4 listen socket on port 8883" "$WORK/mosquitto.log" 2>/dev/null && break; sleep 0.1; done
# The watchlist, retained for the device, as the back office publishes it.
ip netns exec "$NS_BRK" "$VENV/bin/lfr-edge" watchlist publish --device "$DEVICE_ID" --broker "mqtts://$BROKER_IP:8883" \
  --ca "$D/broker/pki/lfr_edge_test_ca.crt" --username backoffice --password-file "$D/backoffice/mqtt.password" \
  "$D/backoffice/watchlist-1.lfrw" > "$WORK/publish.log" 2>&1 || { cat "$WORK/publish.log"; fail "watchlist publish"; }
ip netns exec "$NS_BRK" "$VENV/bin/lfr-edge" alerts listen --config "$WORK/backoffice.yaml" --count 1 \
  --timeout "$WAIT_S" --json > "$WORK/alerts.jsonl" 2> "$WORK/listener.log" & LISTENER=$!; PIDS+=($LISTENER)

# --- 4. Boot ----------------------------------------------------------------------------------------
# The unified cgroup hierarchy: systemd's IP firewall (IPAddressDeny=/Allow=) is BPF on cgroup v2.
say "booting the root (systemd-nspawn --boot)"
# bpf() is outside nspawn's default system-call filter: without it systemd inside finds no BPF
# firewall support and starts the service with IPAddressDeny= silently unenforced (seen here).
mkdir "$BOOT_CG" || fail "cannot create the boot's own cgroup $BOOT_CG"
(
  echo "$BASHPID" > "$BOOT_CG/cgroup.procs"
  SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec systemd-nspawn -q -D "$ROOT" --boot --register=no --keep-unit --machine=lfrboot \
    --system-call-filter=bpf \
    --network-namespace-path="/run/netns/$NS_DEV" --resolv-conf=off --timezone=off \
    --bind="$WORK/bootfs:/boot/firmware" > "$WORK/console.log" 2>&1
) & NSPAWN_PID=$!
for _ in $(seq 200); do
  LEADER=$(cat "/proc/$NSPAWN_PID/task/$NSPAWN_PID/children" 2>/dev/null | awk '{print $1}')
  [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
  LEADER=""; sleep 0.1
done
[ -n "$LEADER" ] || { cat "$WORK/console.log"; fail "the container's systemd did not start"; }
deadline=$((SECONDS + WAIT_S))
until state=$(inside systemctl is-system-running 2>/dev/null) || [ "$state" = degraded ]; do
  [ $SECONDS -lt $deadline ] || fail "boot did not finish (state: ${state:-?})"
  sleep 1
done
pass "booted: system $state"

# 1. provisioned
[ -f "$ROOT/etc/lfr-edge/lfr-edge.yaml" ] && [ ! -e "$WORK/bootfs/lfr-edge.yaml" ] || fail "config not provisioned from the boot partition"
inside journalctl -b --no-pager -u lfr-edge-egress.service | holds "provisioned configuration from boot partition" \
  || fail "no provisioning record in the journal"
pass "provisioned: /boot/firmware/lfr-edge.yaml → /etc/lfr-edge/lfr-edge.yaml (mode $(stat -c %a "$ROOT/etc/lfr-edge/lfr-edge.yaml"))"

# 2. egress plan
dropin=$(inside cat /run/systemd/system/lfr-edge.service.d/10-egress.conf) || fail "no runtime egress drop-in"
allow=$(inside systemctl show -p IPAddressAllow --value lfr-edge.service)
for a in "$BROKER_IP" "$DNS_IP"; do echo "$allow" | grep -q "$a" || fail "IPAddressAllow in force ($allow) lacks $a"; done
echo "$allow" | grep -q "$OTHER_IP" && fail "IPAddressAllow names an unrelated host"
pass "egress drop-in applied: IPAddressAllow=$allow ($BROKER_NAME resolved by DNS at $DNS_IP at this start)"

# 3. started (Type=notify: active only after READY=1)
until [ "$(inside systemctl show -p SubState --value lfr-edge.service)" = running ]; do
  [ $SECONDS -lt $deadline ] || fail "lfr-edge.service not running: $(inside systemctl show -p ActiveState,SubState,Result --value lfr-edge.service | tr '\n' ' ')"
  sleep 1
done
inside systemctl show -p Type --value lfr-edge.service | grep -qx notify || fail "not Type=notify"
pass "started: lfr-edge.service active (running), Type=notify, READY=1 received"

# 4. watchdog
w1=$(inside systemctl show -p WatchdogTimestampMonotonic --value lfr-edge.service)
# The service pings at half of WatchdogSec (sd_watchdog_enabled(3)): wait up to a whole interval.
for _ in $(seq 40); do
  sleep 1
  w2=$(inside systemctl show -p WatchdogTimestampMonotonic --value lfr-edge.service)
  [ "$w2" != "$w1" ] && break
done
[ "${w1:-0}" -gt 0 ] && [ "$w2" -gt "$w1" ] || fail "watchdog not pinging ($w1 → $w2)"
pass "watchdog: WATCHDOG=1 pings arriving (monotonic $w1 → $w2 µs), WatchdogUSec=$(inside systemctl show -p WatchdogUSec --value lfr-edge.service)"

# 5. alert delivered
wait "$LISTENER" || { cat "$WORK/listener.log"; fail "no alert reached the back office"; }
grep -q '"subject_id": *"eileen_collins"' "$WORK/alerts.jsonl" || grep -q eileen_collins "$WORK/alerts.jsonl" \
  || { cat "$WORK/alerts.jsonl"; fail "the alert is not the enrolled subject"; }
pass "alert delivered, verified and unsealed by the back office: $(grep '"event": "alert"' "$WORK/alerts.jsonl" | head -c 240)"

# 6. egress refused for anything but the broker (and its DNS), from inside the service's own cgroup
cat > "$ROOT/opt/lfr-edge-smoke/probe.py" <<'EOF'
import socket, sys
def tcp(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "connected"
    except OSError as e:
        return f"blocked ({e.strerror or e})"
    finally:
        s.close()
for arg in sys.argv[1:]:
    if arg.startswith("dns:"):
        try:
            print(arg, socket.gethostbyname(arg[4:]))
        except OSError as e:
            print(arg, f"blocked ({e})")
    else:
        host, port = arg.rsplit(":", 1); print(arg, tcp(host, int(port)))
EOF
# The unit's cgroup, checked to hold its main process, so the probe below really runs inside it.
main_pid=$(inside systemctl show -p MainPID --value lfr-edge.service)
cg=$(inside systemctl show -p ControlGroup --value lfr-edge.service)
inside grep -qx "$main_pid" "/sys/fs/cgroup$cg/cgroup.procs" || fail "lfr-edge.service's main process is not in /sys/fs/cgroup$cg"
in_unit=$(inside sh -c "echo \$\$ > /sys/fs/cgroup$cg/cgroup.procs && exec python3 /opt/lfr-edge-smoke/probe.py $BROKER_IP:8883 $OTHER_IP:8080 dns:$BROKER_NAME")
outside=$(inside python3 /opt/lfr-edge-smoke/probe.py "$OTHER_IP:8080")
echo "$in_unit" | sed 's/^/  in lfr-edge.service: /'; echo "$outside" | sed 's/^/  outside the unit:    /'
echo "$in_unit" | grep -q "^$BROKER_IP:8883 connected" || fail "the broker is not reachable from the unit"
echo "$in_unit" | grep -q "^dns:$BROKER_NAME $BROKER_IP" || fail "the broker name does not resolve from the unit"
echo "$in_unit" | grep -q "^$OTHER_IP:8080 blocked" || fail "an unrelated host is reachable from the unit"
echo "$outside" | grep -q "connected" || fail "control: the unrelated host is not reachable at all, so the refusal proves nothing"
pass "egress: broker and DNS reachable from the unit; $OTHER_IP refused there, reachable outside it"

# 7. status carries the clock state: listen a little longer (statuses come every 5 s, as JSON lines too)
ip netns exec "$NS_BRK" "$VENV/bin/lfr-edge" alerts listen --config "$WORK/backoffice.yaml" --timeout 12 --json \
  >> "$WORK/alerts.jsonl" 2>> "$WORK/listener.log" || true   # exits 1 at the timeout: no new alert expected
grep '"event": "status"' "$WORK/alerts.jsonl" | holds '"clock": "\(synchronised\|unsynchronised\|unknown\)"' \
  || { grep '"event": "status"' "$WORK/alerts.jsonl" | tail -1; fail "status has no clock field"; }
pass "status: $(grep -o '"clock": "[a-z]*"' "$WORK/alerts.jsonl" | tail -1) (a container cannot discipline the clock)"
# 8. a config that appears after boot: lfr-edge.path starts the service (config written to the card)
cp "$ROOT/etc/lfr-edge/lfr-edge.yaml" "$WORK/late.yaml"
inside systemctl stop lfr-edge.path lfr-edge.service
rm -f "$ROOT/etc/lfr-edge/lfr-edge.yaml"
inside systemctl start lfr-edge.path
sleep 2
[ "$(inside systemctl show -p ActiveState --value lfr-edge.service)" = inactive ] || fail "service running without a config"
cp "$WORK/late.yaml" "$WORK/bootfs/lfr-edge.yaml"
until [ "$(inside systemctl show -p SubState --value lfr-edge.service)" = running ]; do
  [ $SECONDS -lt $deadline ] || fail "lfr-edge.path did not start the service for a late config"
  sleep 1
done
[ -f "$ROOT/etc/lfr-edge/lfr-edge.yaml" ] && [ ! -e "$WORK/bootfs/lfr-edge.yaml" ] || fail "late config not provisioned"
pass "late config: written to the boot partition after boot, lfr-edge.path started the service, provisioned again"
# 9. the broker's address changes (DNS now answers another address): a restart re-resolves it
kill "$DNS_PID"; wait "$DNS_PID" 2>/dev/null || true
dns "$MOVED_IP"
sleep 1
inside systemctl restart lfr-edge.service
until [ "$(inside systemctl show -p SubState --value lfr-edge.service)" = running ]; do
  [ $SECONDS -lt $deadline ] || fail "lfr-edge.service not running after the restart"
  sleep 1
done
allow=$(inside systemctl show -p IPAddressAllow --value lfr-edge.service)
echo "$allow" | grep -q "$MOVED_IP" || fail "after the move, IPAddressAllow ($allow) lacks $MOVED_IP"
echo "$allow" | grep -q "$BROKER_IP/" && fail "after the move, IPAddressAllow ($allow) still allows the old $BROKER_IP"
main_pid=$(inside systemctl show -p MainPID --value lfr-edge.service)
cg=$(inside systemctl show -p ControlGroup --value lfr-edge.service)
in_unit=$(inside sh -c "echo \$\$ > /sys/fs/cgroup$cg/cgroup.procs && exec python3 /opt/lfr-edge-smoke/probe.py $MOVED_IP:8883 $BROKER_IP:8883")
outside=$(inside python3 /opt/lfr-edge-smoke/probe.py "$MOVED_IP:8883")
echo "$in_unit" | sed 's/^/  in lfr-edge.service: /'; echo "$outside" | sed 's/^/  outside the unit:    /'
echo "$in_unit" | grep -q "^$MOVED_IP:8883 connected" || fail "the moved broker is blocked from the unit although IPAddressAllow names it"
inv=$(inside systemctl show -p InvocationID --value lfr-edge.service)
deadline=$((SECONDS + 90))
until inside journalctl -b --no-pager "_SYSTEMD_INVOCATION_ID=$inv" | holds "mqtt: connected"; do
  [ $SECONDS -lt $deadline ] || fail "no MQTT connection to the moved broker"
  sleep 1
done
pass "broker moved: restart re-resolved $BROKER_NAME → $MOVED_IP, IPAddressAllow=$allow, MQTT connected again"
say "PASS (artefacts in $WORK)"
