#!/usr/bin/env bash
# What tandem costs in the request path, side by side in one run on this machine: the sample
# orders service (on PostgreSQL) driven directly, through tandem in old-only, dual-write (sync
# and async mirroring) and shadow, and through nginx's `mirror` directive (Debian's package) in
# front of the same two services. Closed loop (CLIENTS clients) gives throughput; open loop
# (RATE requests/s) gives latency. Then the stage-change propagation time to two proxies
# sharing a PostgreSQL control store. Prints Markdown tables for docs/benchmarks.md.
# The shared journal's cell (fleet mode) runs one proxy on a NATS JetStream server of the
# run's own (file storage in the run's directory, a free loopback port), so nothing is left
# on the machine's NATS.
#
#   loadtest/bench/proxy-vs-nginx.sh        (DURATION=10s CLIENTS=32 RATE=300 CHANGES=100)
#   PLACEMENT=split loadtest/bench/proxy-vs-nginx.sh
#
# PLACEMENT=shared (default): everything shares both cores and the services use PostgreSQL.
# PLACEMENT=split: the new side runs on a host of its own, emulated with CPU affinity: the new
# service and its SQLite database on core 1, everything else (load generator, proxy or nginx,
# the old service and its SQLite database) on core 0, the direct run included.
#
# Loopback only; creates uniquely named databases and drops them; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/bench/processes.sh
. loadtest/bench/nginx-mirror.sh
duration=${DURATION:-10s}
clients=${CLIENTS:-32}
rate=${RATE:-300}
changes=${CHANGES:-100}
mix=${MIX:-put=40,patch=20,get=35,delete=5}
server=postgres://postgres@127.0.0.1:5432
suffix="$$_$(date +%s)"
dbs=("tandem_bench_old_$suffix" "tandem_bench_new_$suffix" "tandem_bench_control_$suffix")
work=$(mktemp -d)
pids=()
placement=${PLACEMENT:-shared}
case "$placement" in
  shared) main=(); side=(); old_db="$server/${dbs[0]}"; new_db="$server/${dbs[1]}" ;;
  split) main=(taskset -c 0); side=(taskset -c 1); old_db="sqlite://$work/old.db"; new_db="sqlite://$work/new.db" ;;
  *) echo "PLACEMENT must be shared or split" >&2; exit 2 ;;
esac

trap cleanup EXIT

scripts/ensure-services
if ! command -v nginx >/dev/null 2>&1; then
  echo "installing nginx (Debian package; its system service is not started)" >&2
  sudo=""; [ "$(id -u)" != 0 ] && sudo="sudo"
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx-light >/dev/null \
    || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi
cargo build --release --quiet --workspace --bins
bin=$(realpath "${CARGO_TARGET_DIR:-target}")/release
for db in "${dbs[@]}"; do psql_do -c "CREATE DATABASE $db"; done
control="$server/${dbs[2]}"

start old "listening on" "${main[@]}" "$bin/tandem-loadtest" serve --db "$old_db" --listen 127.0.0.1:0
old=$(echo "$line" | awk '{print $NF}')
start new "listening on" "${side[@]}" "$bin/tandem-loadtest" serve --db "$new_db" --listen 127.0.0.1:0
new=$(echo "$line" | awk '{print $NF}')

declare -A throughput p50 p99 errors
measure() {
  local label=$1 target=$2
  local closed open
  closed=$("${main[@]}" "$bin/tandem-loadtest" run --target "$target" --concurrency "$clients" --duration "$duration" --mix "$mix" --format json)
  open=$("${main[@]}" "$bin/tandem-loadtest" run --target "$target" --rate "$rate" --duration "$duration" --mix "$mix" --format json)
  throughput[$label]=$(echo "$closed" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput_per_second"]))')
  p50[$label]=$(echo "$open" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_ms"]["p50"])')
  p99[$label]=$(echo "$open" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_ms"]["p99"])')
  errors[$label]=$(printf '%s\n%s' "$closed" "$open" | python3 -c '
import json,sys
text = sys.stdin.read()
decoder, total, at = json.JSONDecoder(), 0, 0
while at < len(text.strip()):
    value, end = decoder.raw_decode(text, at)
    total += sum(value["errors"].values()); at = end
    while at < len(text) and text[at].isspace(): at += 1
print(total)')
  echo "measured $label: ${throughput[$label]} req/s, p50 ${p50[$label]} ms, p99 ${p99[$label]} ms, errors ${errors[$label]}" >&2
}

measure direct "$old"

tandem_run() {
  local label=$1 stage=$2 mode=$3 proxy admin
  shift 3
  start "proxy-$label" "tandem proxy listening on" "${main[@]}" "$bin/tandem" proxy --old "$old" --new "$new" \
    --control-db "$control" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --mirror "$mode" \
    --journal-dir "$work/journal-$label" "$@"
  proxy=$(echo "$line" | awk '{print $5}')
  admin=$(echo "$line" | sed -E 's/.*admin (http[^)]*)\).*/\1/')
  TANDEM_LOG=warn "$bin/tandem" stage set "$stage" --force --reason benchmark --by bench --control-db "$control" >/dev/null
  sleep 0.5
  measure "$label" "$proxy"
  stop_last
}
tandem_run "tandem old-only" old-only async
tandem_run "tandem dual-write sync" dual-write sync
tandem_run "tandem dual-write async" dual-write async
tandem_run "tandem dual-write async, journal fsync" dual-write async --journal-fsync true
tandem_run "tandem shadow" shadow async

# Fleet mode: the same async dual-write with the journal on NATS JetStream.
nats_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${main[@]}" nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
  sleep 0.05
done
tandem_run "tandem dual-write async, shared journal (NATS)" dual-write async --journal "nats://127.0.0.1:$nats_port"

nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
write_nginx_mirror_conf "$nginx_port"
"${main[@]}" nginx -p "$work" -c "$work/nginx.conf"
sleep 0.5
measure "nginx mirror" "http://127.0.0.1:$nginx_port"
kill -QUIT "$(cat "$work/nginx.pid")"; rm -f "$work/nginx.pid"

# Stage-change propagation to two proxies sharing the PostgreSQL control store.
admins=()
for n in 1 2; do
  start "prop-$n" "tandem proxy listening on" "$bin/tandem" proxy --old "$old" --new "$new" \
    --control-db "$control" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --journal-dir "$work/journal-prop-$n"
  admins+=(--admin "$(echo "$line" | sed -E 's/.*admin (http[^)]*)\).*/\1/')")
done
propagation=$("$bin/tandem-loadtest" propagation --control-db "$control" "${admins[@]}" --changes "$changes")

echo
echo "placement $placement; closed loop: $clients clients, $duration; open loop: $rate requests/s, $duration; mix $mix"
echo
echo "| path | throughput (req/s) | vs direct | p50 (ms) | p99 (ms) | added p99 vs direct (ms) | errors |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for label in direct "tandem old-only" "tandem dual-write sync" "tandem dual-write async" \
  "tandem dual-write async, journal fsync" "tandem shadow" \
  "tandem dual-write async, shared journal (NATS)" "nginx mirror"; do
  printf '| %s | %s | %.2f | %s | %s | %+.2f | %s |\n' "$label" "${throughput[$label]}" \
    "$(echo "${throughput[$label]} / ${throughput[direct]}" | bc -l)" "${p50[$label]}" "${p99[$label]}" \
    "$(echo "${p99[$label]} - ${p99[direct]}" | bc -l)" "${errors[$label]}"
done
echo
printf 'dual-write async / nginx mirror throughput: %.2f\n' "$(echo "${throughput["tandem dual-write async"]} / ${throughput["nginx mirror"]}" | bc -l)"
printf 'dual-write async, shared journal (NATS) / local journal: %.2f\n' "$(echo "${throughput["tandem dual-write async, shared journal (NATS)"]} / ${throughput["tandem dual-write async"]}" | bc -l)"
printf 'dual-write async, journal fsync / without: %.2f\n' "$(echo "${throughput["tandem dual-write async, journal fsync"]} / ${throughput["tandem dual-write async"]}" | bc -l)"
echo
echo "stage-change propagation, 2 proxies, PostgreSQL control store: $(echo "$propagation" | tr -d '\n ')"
