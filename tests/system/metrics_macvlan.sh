#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Prometheus metrics of a macvlan uplink (AF_XDP on a veth into a namespace):
#
#   namespace --veth-- uplink (XDP + AF_XDP) -- vpmd macvlan -- vm0 (vpmd-bench rxonly)
#
#  1. The namespace sends 200 pings to vm0's MAC; rxonly on vm0 receives them
#     through the XDP redirect and AF_XDP.
#  2. A scrape has vpmd_uplink_info (native/driver XDP, copy sockets, bridge) and
#     every vpmd_uplink_xsk_*_total (the kernel's XDP_STATISTICS) for the uplink;
#     promtool accepts it; the uplink's counters and its XDP_STATISTICS equal
#     `vpmd stats --json` (uplink.xsk_kernel) taken before and after the scrape.
#
# Usage (from the repo root, as root): bash tests/system/metrics_macvlan.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -x $VPMD ]] || fail "vpmd binary $VPMD missing (cargo build --release)"
[[ -x $BENCH ]] || fail "vpmd-bench binary $BENCH missing (cargo build --release)"
[[ $(id -u) -eq 0 ]] || fail "run as root (namespaces, XDP)"
for b in curl jq python3 promtool; do command -v $b >/dev/null || fail "$b missing (run scripts/install-deps.sh)"; done

NS=vpmd-mm-$$ UP=vpmdmm$$ OUT=out0
add_netns "$NS"
add_veth "$UP" "$NS" "$OUT"
ip link set "$UP" up
ip -n "$NS" addr add 198.18.41.254/24 dev "$OUT"
ip -n "$NS" link set "$OUT" up
VM_MAC=52:54:00:00:41:01
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT/metrics
cat >"$WORK/vpmd.toml" <<TOML
[pmd]
cores = [1]
control_socket = "$CONTROL"
metrics = "127.0.0.1:$PORT"

[[port]]
name = "vm0"
socket = "$WORK/vm0.sock"
mac = "$VM_MAC"

[[macvlan]]
uplink = "$UP"
ports = ["vm0"]
TOML
start_vpmd "$WORK/vpmd.toml"

# ------------------------------------------------------------ 1. traffic in
start_bench rx --json rxonly "$WORK/vm0.sock" --duration 60 --idle-timeout 60
RX=$BENCH_PID
wait_for_log "$WORK/rx.log" "rxonly ready" 30 "$RX" || fail "rxonly did not start"
wait_port_state vm0 up 20 || fail "vm0 not up"
ip -n "$NS" neigh replace 198.18.41.1 lladdr "$VM_MAC" dev "$OUT" nud permanent
ip netns exec "$NS" ping -c 200 -i 0.01 -W 1 198.18.41.1 >/dev/null 2>&1 || true
wait_value 10 yes sh -c "[ \$($VPMD stats --json --control $CONTROL | jq '.ports[] | select(.name == \"vm0\") | .rx_packets') -ge 200 ] && echo yes" ||
  fail "the namespace's 200 pings did not reach vm0: $(vpmd_stats_json)"
stop_pid "$RX" TERM 10
log "1: 200 pings from the namespace reached vm0 through XDP and AF_XDP"

# ------------------------------------------------------------ 2. scrape
sleep 1
vpmd_stats_json >"$WORK/before.json" || fail "vpmd stats failed"
curl -sS --max-time 5 -o "$WORK/m.prom" "$URL" || fail "curl $URL failed"
vpmd_stats_json >"$WORK/after.json" || fail "vpmd stats failed"
promtool check metrics <"$WORK/m.prom" >"$WORK/promtool.log" 2>&1 || fail "promtool: $(cat "$WORK/promtool.log")"
grep -q "^vpmd_uplink_info{port=\"$UP\",xdp=\"[a-z]*\",socket_mode=\"[a-z-]*\",macvlan_mode=\"bridge\"} 1$" "$WORK/m.prom" ||
  fail "no vpmd_uplink_info for $UP: $(grep uplink_info "$WORK/m.prom")"
python3 - "$WORK/before.json" "$WORK/after.json" "$WORK/m.prom" "$UP" >"$WORK/compare.log" 2>&1 <<'PY' ||
import json, sys
before, after = (json.load(open(f)) for f in sys.argv[1:3])
up = sys.argv[4]
samples = {}
for line in open(sys.argv[3]):
    if not line.startswith("#") and line.strip():
        k, v = line.rsplit(" ", 1); samples[k] = int(v)
def want(j):
    p = next(p for p in j["ports"] if p["name"] == up)
    w = {f'vpmd_port_{f}_total{{port="{up}"}}': p[f] for f in ["rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "forwarded"]}
    for r, v in p["drops"].items():
        w[f'vpmd_port_drops_total{{port="{up}",reason="{r}"}}'] = v
    k = p["uplink"].get("xsk_kernel")
    if k is None:
        sys.exit(f"no uplink.xsk_kernel in vpmd stats --json: {p['uplink']}")
    for n, v in k.items():
        w[f'vpmd_uplink_xsk_{n}_total{{port="{up}"}}'] = v
    return w
wb, wa = want(before), want(after)
if wb != wa:
    sys.exit(f"stats changed around the scrape: {[k for k in wa if wa[k] != wb[k]]}")
bad = [f"{k}: metrics {samples.get(k)} != stats {v}" for k, v in wa.items() if samples.get(k) != v]
if bad:
    sys.exit("\n".join(bad))
xsk = {k.split("{")[0][len("vpmd_uplink_xsk_"):-len("_total")]: v for k, v in wa.items() if "xsk" in k}
print(f"{len(wa)} uplink samples equal vpmd stats --json; XDP_STATISTICS {xsk}")
PY
  fail "uplink metrics disagree with vpmd stats --json: $(cat "$WORK/compare.log")"
[[ $(grep -c "^vpmd_uplink_xsk_.*_total{port=\"$UP\"} [0-9]*$" "$WORK/m.prom") == 6 ]] ||
  fail "not all six XDP_STATISTICS counters: $(grep xsk "$WORK/m.prom")"
log "2: $(cat "$WORK/compare.log")"
stop_vpmd
pass "uplink attachment and the kernel's XDP_STATISTICS in the metrics, equal to vpmd stats --json; promtool accepts them"
