#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Prometheus metrics ([pmd] metrics, issue 14):
#
#   vpmd-bench txonly ==vm0== vpmd (veth pair, metrics on 127.0.0.1) ==vm1== vpmd-bench rxonly
#
#  1. Bad pmd.metrics values are refused by `vpmd run --check` with an error
#     naming pmd.metrics; a second vpmd asking for the same address fails at
#     start-up with "pmd.metrics: cannot listen on ...".
#  2. During traffic (txonly -> rxonly, 40000 frames at 20 kpps) curl scrapes
#     /metrics over and over: every scrape is accepted by `promtool check
#     metrics`, tx counts only grow, and vm1's negotiated features are there
#     while its frontend is connected.
#  3. Twenty clients that connect and send nothing do not delay a scrape.
#  4. After the traffic stopped: every counter of the scrape (per port rx/tx
#     packets and bytes, forwarded, rx_dropped, ring_errors, every drop reason,
#     every fault, up; per thread frames and busy cycles) equals `vpmd stats
#     --json` taken just before and just after it (which agree with each other);
#     vm0's tx_packets is the 40000 sent, = forwarded + drops = vm1's rx_packets
#     + drops.
#  5. Other paths get 404, other methods 405.
#  6. `vpmd stats --pmd` shows the thread's frames, streams and ports;
#     `vpmd stats --watch 0.5 --count 2` prints two screens whose vm0 TX rate is
#     nonzero during a stream to a port with no receiver (peer_down shown).
#
# Usage (from the repo root): bash tests/system/metrics.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -x $VPMD ]] || fail "vpmd binary $VPMD missing (cargo build --release)"
[[ -x $BENCH ]] || fail "vpmd-bench binary $BENCH missing (cargo build --release)"
for b in curl jq python3; do command -v $b >/dev/null || fail "$b missing (run scripts/install-deps.sh)"; done
if ! command -v promtool >/dev/null; then
  [[ $(id -u) -eq 0 ]] || fail "promtool missing (package prometheus) and not root to install it"
  "$REPO/scripts/install-deps.sh" >/dev/null || fail "install-deps.sh failed"
fi

# A free TCP port on 127.0.0.1.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT/metrics
DIR=$WORK/run
write_config "$WORK/vpmd.toml" server 1500 "$DIR"
sed -i "s|^control_socket = .*|&\nmetrics = \"127.0.0.1:$PORT\"|" "$WORK/vpmd.toml"
grep -q "^metrics = \"127.0.0.1:$PORT\"" "$WORK/vpmd.toml" || fail "could not write the config"

# ------------------------------------------------------------ 1. bad values
for bad in '"localhost:9477"' '"127.0.0.1"' '"127.0.0.1:0"' '9477'; do
  sed "s|^metrics = .*|metrics = $bad|" "$WORK/vpmd.toml" >"$WORK/bad.toml"
  if "$VPMD" run --check --config "$WORK/bad.toml" >"$WORK/bad.out" 2>&1; then
    fail "metrics = $bad was accepted"
  fi
  grep -q 'metrics' "$WORK/bad.out" || fail "metrics = $bad: error does not name the field: $(cat "$WORK/bad.out")"
  log "1: metrics = $bad: $(tr '\n' ' ' <"$WORK/bad.out" | cut -c1-160)"
done
"$VPMD" run --check --config "$WORK/vpmd.toml" >"$WORK/check.out" || fail "--check failed"
grep -q "metrics: $URL" "$WORK/check.out" || fail "--check does not show the metrics address"

start_vpmd "$WORK/vpmd.toml"
grep -aq "metrics: serving $URL" "$VPMD_LOG" || fail "vpmd did not log the metrics address"
# The same address again, everything else apart: a start-up error naming the field.
sed -e "s|$DIR|$WORK/run2|g" -e "s|^control_socket = .*|control_socket = \"$WORK/control2.sock\"|" \
  "$WORK/vpmd.toml" >"$WORK/second.toml"
mkdir -p "$WORK/run2"
if timeout 20 "$VPMD" run --config "$WORK/second.toml" >/dev/null 2>"$WORK/second.log"; then
  fail "a second vpmd started on the same metrics address"
fi
grep -q "pmd.metrics: cannot listen on 127.0.0.1:$PORT" "$WORK/second.log" ||
  fail "second vpmd's error does not name pmd.metrics: $(cat "$WORK/second.log")"
log "1: same address twice: $(grep -m1 'pmd.metrics' "$WORK/second.log" | cut -c1-140)"

# scrape FILE: GET /metrics into FILE, checked by promtool.
scrape() {
  curl -sS --max-time 5 -o "$1" -w '%{http_code} %{content_type}\n' "$URL" >"$1.status" ||
    fail "curl $URL failed"
  read -r code ctype <"$1.status"
  [[ $code == 200 && $ctype == "text/plain; version=0.0.4; charset=utf-8" ]] ||
    fail "GET /metrics: $(cat "$1.status")"
  promtool check metrics <"$1" >"$1.promtool" 2>&1 ||
    fail "promtool check metrics rejects $1: $(head -n 20 "$1.promtool")"
}
# metric FILE LINE_PREFIX: the value of the one sample whose name{labels} is LINE_PREFIX.
metric() {
  awk -v k="$2" '$1 == k { print $2; n++ } END { exit n != 1 }' "$1" || fail "no single sample $2 in $1"
}

scrape "$WORK/idle.prom"
[[ $(metric "$WORK/idle.prom" 'vpmd_port_up{port="vm0",kind="vhost-user"}') == 0 ]] || fail "vm0 up with no frontend"
log "2: idle scrape: $(grep -vc '^#' "$WORK/idle.prom") samples, accepted by promtool check metrics"

# ------------------------------------------------------------ 2. during traffic
N=40000
start_bench rx --json rxonly "$DIR/vm1.sock" --count "$N" --idle-timeout 5 --first-timeout 30
RX=$BENCH_PID
wait_for_log "$WORK/rx.log" "rxonly ready" 30 "$RX" || fail "rxonly did not start"
wait_port_state vm1 up 10 || fail "vm1 not up"
"$BENCH" txonly "$DIR/vm0.sock" --count "$N" --rate 20000 >"$WORK/tx.log" 2>&1 &
TX=$!
register_pid "$TX" vpmd-bench
scrapes=0 last=0 during=""
while alive "$TX"; do
  f=$WORK/during.$scrapes.prom
  scrape "$f"
  tx=$(metric "$f" 'vpmd_port_tx_packets_total{port="vm0"}')
  ((tx >= last)) || fail "vm0 tx_packets went backwards: $last then $tx"
  ((tx > 0 && tx < N)) && during=$f
  last=$tx scrapes=$((scrapes + 1))
  sleep 0.2
done
wait "$TX" || fail "txonly failed: $(cat "$WORK/tx.log")"
wait "$RX" || fail "rxonly failed: $(cat "$WORK/rx.log")"
[[ -n $during ]] || fail "no scrape landed while frames were flowing ($scrapes scrapes)"
grep -q '^vpmd_port_feature_negotiated{port="vm1",feature="VERSION_1"} 1$' "$during" ||
  fail "vm1's negotiated features missing from a scrape during traffic: $(grep feature "$during")"
[[ $(metric "$during" 'vpmd_port_up{port="vm1",kind="vhost-user"}') == 1 ]] || fail "vm1 not up in $during"
log "2: rxonly: $(jq -c '{frames, lost}' "$WORK/rx.out") (frames vpmd could not deliver are counted in drops: checked in 4)"
log "2: $scrapes scrapes during traffic, all accepted by promtool; mid-stream vm0 tx_packets=$(metric "$during" 'vpmd_port_tx_packets_total{port="vm0"}')"

# ------------------------------------------------------------ 3. silent clients
fds=()
for ((i = 0; i < 20; i++)); do
  exec {fd}<>"/dev/tcp/127.0.0.1/$PORT" || fail "cannot open silent connection $i"
  fds+=("$fd")
done
t0=$(date +%s%N)
scrape "$WORK/silent.prom"
ms=$((($(date +%s%N) - t0) / 1000000))
((ms < 1500)) || fail "a scrape behind 20 silent clients took $ms ms"
for fd in "${fds[@]}"; do exec {fd}>&-; done
log "3: scrape behind 20 silent connections: $ms ms"

# ------------------------------------------------------------ 4. = stats --json
sleep 1
vpmd_stats_json >"$WORK/before.json" || fail "vpmd stats failed"
scrape "$WORK/final.prom"
vpmd_stats_json >"$WORK/after.json" || fail "vpmd stats failed"
python3 - "$WORK/before.json" "$WORK/after.json" "$WORK/final.prom" >"$WORK/compare.log" 2>&1 <<'PY' ||
import json, re, sys
before, after = (json.load(open(f)) for f in sys.argv[1:3])
samples = {}
for line in open(sys.argv[3]):
    if line.startswith("#") or not line.strip():
        continue
    key, value = line.rsplit(" ", 1)
    samples[key] = int(value)
def want(j):
    w = {}
    for p in j["ports"]:
        n = p["name"]
        w[f'vpmd_port_up{{port="{n}",kind="{p["kind"]}"}}'] = int(p["state"] == "up")
        for f in ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "forwarded", "rx_dropped", "ring_errors"]:
            w[f'vpmd_port_{f}_total{{port="{n}"}}'] = p[f]
        for r, v in p["drops"].items():
            w[f'vpmd_port_drops_total{{port="{n}",reason="{r}"}}'] = v
        for r, v in (p.get("faults") or {}).items():
            w[f'vpmd_port_faults_total{{port="{n}",fault="{r}"}}'] = v
    for t in j["threads"]:
        c = t["core"]
        w[f'vpmd_pmd_frames_total{{core="{c}"}}'] = t["frames"]
        w[f'vpmd_pmd_busy_cycles_total{{core="{c}"}}'] = t["busy_cycles"]
    return w
wb, wa = want(before), want(after)
if wb != wa:
    sys.exit(f"vpmd stats changed around the scrape: {[k for k in wa if wa[k] != wb.get(k)]}")
bad = [f"{k}: metrics {samples.get(k)} != stats {v}" for k, v in wa.items() if samples.get(k) != v]
if bad:
    sys.exit("\n".join(bad))
drops = sum(1 for k in samples if k.startswith("vpmd_port_drops_total"))
vm0_tx = wa['vpmd_port_tx_packets_total{port="vm0"}']
print(f"{len(wa)} samples equal vpmd stats --json ({drops} drop-reason samples); vm0 tx_packets={vm0_tx}")
PY
  fail "metrics disagree with vpmd stats --json: $(cat "$WORK/compare.log")"
log "4: $(cat "$WORK/compare.log")"
tx=$(metric "$WORK/final.prom" 'vpmd_port_tx_packets_total{port="vm0"}')
rx=$(metric "$WORK/final.prom" 'vpmd_port_rx_packets_total{port="vm1"}')
((tx == N)) || fail "after $N frames: vm0 tx_packets=$tx"
assert_port_accounting "$(cat "$WORK/after.json")" vm0 vm1

# ------------------------------------------------------------ 5. other requests
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/nope")
[[ $code == 404 ]] || fail "GET /nope: $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL")
[[ $code == 405 ]] || fail "POST /metrics: $code"
log "5: /nope 404, POST 405"

# ------------------------------------------------------------ 6. stats --pmd / --watch
"$VPMD" stats --pmd --control "$CONTROL" >"$WORK/pmd.txt" || fail "vpmd stats --pmd failed"
frames=$(jq '.threads[0].frames' "$WORK/after.json")
for want in "pmd thread core 1:" "  frames: $frames" "  streams: vm0->vm1, vm1->vm0"; do
  grep -qxF -- "$want" "$WORK/pmd.txt" || fail "vpmd stats --pmd has no line '$want': $(cat "$WORK/pmd.txt")"
done
grep -q "^  port vm0: down  rx [0-9]* frames [0-9]* bytes  tx $N frames" "$WORK/pmd.txt" ||
  fail "vpmd stats --pmd does not show vm0's counters: $(cat "$WORK/pmd.txt")"
start_bench tx2 txonly "$DIR/vm0.sock" --duration 4 --rate 10000
sleep 1.5
"$VPMD" stats --watch 0.5 --count 2 --control "$CONTROL" >"$WORK/watch.txt" || fail "vpmd stats --watch failed"
[[ $(grep -c '^vpmd stats --watch 0.5: rates per second' "$WORK/watch.txt") == 2 ]] ||
  fail "vpmd stats --watch --count 2 did not print 2 screens: $(cat "$WORK/watch.txt")"
# vm0's TX rate during a 10 kpps stream: nonzero (vm1 has no receiver: peer_down).
awk '$1 == "vm0" && $5 != "0" { ok = 1 } END { exit !ok }' "$WORK/watch.txt" ||
  fail "vpmd stats --watch shows no TX rate on vm0 during traffic: $(cat "$WORK/watch.txt")"
grep -q 'peer_down=' "$WORK/watch.txt" || fail "--watch does not show the drop reason: $(cat "$WORK/watch.txt")"
wait "$BENCH_PID" || fail "txonly (watch) failed: $(cat "$WORK/tx2.log")"
log "6: --pmd shows the thread and its ports; --watch: $(grep -m1 '^vm0 ' "$WORK/watch.txt" | tr -s ' ')"
stop_vpmd
pass "promtool accepts every scrape; metrics equal vpmd stats --json; bad addresses and busy ports name pmd.metrics"
