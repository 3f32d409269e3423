#!/usr/bin/env bash
# Latency added by tandem, told apart from the machine's own stalls: direct and tandem paths
# driven alternately in one run, ROUNDS times, each a long open loop (RATE requests/s for
# DURATION) and a short closed loop (CLIENTS clients for CLOSED), so that a stall of the
# machine lands on every path alike and the per-round figures can be set side by side. Two
# builds can be compared the same way (A/B): BINS="before=DIR after=DIR", each DIR holding
# `tandem` (the load generator and services come from the first).
#
#   loadtest/bench/proxy-ab.sh     (ROUNDS=3 DURATION=60s RATE=300 CLOSED=10s CLIENTS=32
#                                   MODES="old-only dual-write-async" BINS=<this build>)
#
# MODES: old-only, dual-write-async, dual-write-sync (through tandem); dual-write-nats (async,
# the journal shared on a NATS JetStream server of the run's own, file storage: fleet mode);
# nginx-mirror (nginx must be installed: proxy-vs-nginx.sh installs it); direct-fsync: direct
# with a checkpoint-like fsync every second in a process beside it.
#
# Same services as proxy-vs-nginx.sh (PLACEMENT=shared): the sample orders service twice, on
# PostgreSQL, a PostgreSQL control store; everything on the machine's cores. Prints one line
# per measurement, then a Markdown table of each path's medians over the rounds.
#
# Loopback only; creates uniquely named databases and drops them; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. loadtest/bench/processes.sh
. loadtest/bench/nginx-mirror.sh
rounds=${ROUNDS:-3}
duration=${DURATION:-60s}
rate=${RATE:-300}
closed=${CLOSED:-10s}
clients=${CLIENTS:-32}
modes=${MODES:-old-only dual-write-async}
mix=${MIX:-put=40,patch=20,get=35,delete=5}
server=postgres://postgres@127.0.0.1:5432
suffix="$$_$(date +%s)"
dbs=("tandem_ab_old_$suffix" "tandem_ab_new_$suffix")
work=$(mktemp -d)
pids=()

trap cleanup EXIT

scripts/ensure-services
if [ -z "${BINS:-}" ]; then
  cargo build --release --quiet --workspace --bins
  BINS="this=$(realpath "${CARGO_TARGET_DIR:-target}")/release"
fi
read -r -a builds <<<"$BINS"
first=${builds[0]#*=}
# A control store per build: builds of different ages have different store schemas.
declare -A controls
for i in "${!builds[@]}"; do
  dbs+=("tandem_ab_control_${suffix}_$i")
  controls[${builds[$i]#*=}]="$server/tandem_ab_control_${suffix}_$i"
done
for db in "${dbs[@]}"; do psql_do -c "CREATE DATABASE $db"; done

start old "listening on" "$first/tandem-loadtest" serve --db "$server/${dbs[0]}" --listen 127.0.0.1:0
old=$(echo "$line" | awk '{print $NF}')
start new "listening on" "$first/tandem-loadtest" serve --db "$server/${dbs[1]}" --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0
new=$(echo "$line" | awk '{print $NF}')
# NEW_LATENCY_MS=20: the new side answers that much later (its faults admin), as a service in
# another region would; how fast the copies then drain is in the "copies waiting" lines.
if [ -n "${NEW_LATENCY_MS:-}" ]; then
  for _ in $(seq 1 100); do grep -q "faults admin listening on" "$work/new.out" && break; sleep 0.05; done
  new_admin=$(grep -m1 "faults admin listening on" "$work/new.out" | awk '{print $NF}')
  curl -sf -X PUT -H 'content-type: application/json' -d "{\"latency_ms\": $NEW_LATENCY_MS}" "$new_admin/faults" >/dev/null
fi

results="$work/results"
: >"$results"
# Tandem's own histograms over the open loop: the share of requests slower than 10 and 25 ms
# as tandem timed them (from the request's arrival to its answer) and as the old side's answers
# took (upstream, to the response head). Equal shares: the slow requests were slow upstream.
scrape() { curl -s "$1/metrics" | grep -E '^tandem_(request|upstream_request)_duration_seconds_bucket' >"$2" || true; }
tails() {
  python3 - "$1" "$2" <<'PY'
import re, sys
def load(path):
    counts = {}
    for line in open(path):
        m = re.match(r'(\w+)_bucket\{(.*)\} (\S+)', line)
        if not m: continue
        name, labels, value = m.groups()
        le = re.search(r'(?:^|,)le="([^"]+)"', labels).group(1)
        if name.startswith("tandem_upstream") and 'role="primary"' not in labels: continue
        key = (name, le)
        counts[key] = counts.get(key, 0) + float(value)
    return counts
before, after = load(sys.argv[1]), load(sys.argv[2])
out = []
for name, short in (("tandem_request_duration_seconds", "in tandem"), ("tandem_upstream_request_duration_seconds", "upstream")):
    total = after.get((name, "+Inf"), 0) - before.get((name, "+Inf"), 0)
    shares = []
    for le in ("0.01", "0.025"):
        under = after.get((name, le), 0) - before.get((name, le), 0)
        shares.append(f"{100 * (total - under) / max(total, 1):.2f}% > {float(le) * 1000:.0f} ms")
    out.append(f"{short}: {int(total)} requests, " + ", ".join(shares))
print("; ".join(out))
PY
}

measure() {
  local label=$1 round=$2 target=$3 admin=${4:-} throughput open
  throughput=$("$first/tandem-loadtest" run --target "$target" --concurrency "$clients" --duration "$closed" --mix "$mix" --format json \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["throughput_per_second"]))')
  [ -n "$admin" ] && scrape "$admin" "$work/metrics-before"
  open=$("$first/tandem-loadtest" run --target "$target" --rate "$rate" --duration "$duration" --mix "$mix" --format json)
  if [ -n "$admin" ]; then
    scrape "$admin" "$work/metrics-after"
    echo "  $label, round $round, open loop: $(tails "$work/metrics-before" "$work/metrics-after")" | tee -a "$work/tails" >&2
  fi
  echo "$open" | python3 -c '
import json, sys
label, round_, throughput = sys.argv[1], sys.argv[2], sys.argv[3]
report = json.load(sys.stdin)
latency = report["latency_ms"]
errors = sum(report["errors"].values())
print("\t".join([label, round_, throughput] + [str(latency[k]) for k in ("p50", "p99", "p999", "max")] + [str(errors)]))
' "$label" "$round" "$throughput" | tee -a "$results" >&2
}

# Direct, with a process beside it that does what the journal's checkpoint did every second
# before it skipped unchanged ones: a small file written, fsynced, renamed into place and its
# directory fsynced. Tells whether such a sync, off the request path, stalls the services'
# PostgreSQL commits on the same disk.
direct_with_fsync() {
  local round=$1
  python3 -c '
import os, sys, time
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
while True:
    fd = os.open(d + "/checkpoint.tmp", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"x" * 44); os.fsync(fd); os.close(fd)
    os.rename(d + "/checkpoint.tmp", d + "/checkpoint")
    fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
    time.sleep(1)
' "$work/fsync-$round" &
  pids+=($!)
  measure "direct, fsync every second beside it" "$round" "$old"
  stop_last
}

# nginx's `mirror` directive in front of the same two services, as in proxy-vs-nginx.sh.
nginx_run() {
  local round=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  write_nginx_mirror_conf "$port"
  nginx -p "$work" -c "$work/nginx.conf"
  sleep 0.5
  measure "nginx mirror" "$round" "http://127.0.0.1:$port"
  kill -QUIT "$(cat "$work/nginx.pid")"
  while [ -f "$work/nginx.pid" ]; do sleep 0.1; done
}

# The fleet's shared journal: a JetStream server of the run's own (file storage, loopback;
# the 2.10 the fleet needs, from scripts/ensure-nats), started at the first dual-write-nats
# run and stopped with everything else.
nats_url=""
ensure_nats() {
  [ -n "$nats_url" ] && return
  local port nats_server
  nats_server=$(scripts/ensure-nats)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$nats_server" -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >"$work/nats.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  nats_url="nats://127.0.0.1:$port"
}

# Whether a build has a journal: builds from before it (the in-memory queue, for an A/B of the
# journal's cost) take no journal flag and run no dual-write-nats.
has_journal() { "$1/tandem" proxy --help 2>/dev/null | grep -q -- --journal-dir; }
runs_mode() { [ "$2" != dual-write-nats ] || has_journal "$1"; }

# A fleet instance starts with its cutover window open (a change of stage may have happened just
# before): until every copy the shared journal held is settled, each request first asks the
# stream about its key. The measurement is of the steady state, so it begins once the window
# closed (at most 120 s; how long it took is printed).
window_closed() {
  local label=$1 round=$2 admin=$3 waited=0
  while [ "$waited" -lt 1200 ]; do
    curl -s "$admin/metrics" | grep -q '^tandem_cutover_window_open 0' && break
    sleep 0.1; waited=$((waited + 1))
  done
  echo "  $label, round $round: cutover window closed after $((waited / 10)).$((waited % 10)) s" | tee -a "$work/tails" >&2
}

proxy_run() {
  local label=$1 round=$2 dir=$3 mode=$4 stage mirror proxy admin journal=() control
  control=${controls[$dir]}
  has_journal "$dir" && journal=(--journal-dir "$work/journal-$label-$round")
  case "$mode" in
    old-only) stage=old-only; mirror=async ;;
    dual-write-async) stage=dual-write; mirror=async ;;
    dual-write-sync) stage=dual-write; mirror=sync ;;
    # The journal directory still holds the gap log (records of writes not mirrored).
    dual-write-nats) stage=dual-write; mirror=async; ensure_nats; journal+=(--journal "$nats_url") ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  start "proxy" "tandem proxy listening on" "$dir/tandem" proxy --old "$old" --new "$new" \
    --control-db "$control" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --mirror "$mirror" \
    "${journal[@]}"
  proxy=$(echo "$line" | awk '{print $5}')
  admin=$(echo "$line" | sed -E 's/.*admin (http[^)]*)\).*/\1/')
  TANDEM_LOG=warn "$dir/tandem" stage set "$stage" --force --reason benchmark --by bench --control-db "$control" >/dev/null
  sleep 0.5
  [ "$mode" = dual-write-nats ] && window_closed "$label" "$round" "$admin"
  measure "$label" "$round" "$proxy" "$admin"
  [ "$stage" = dual-write ] && drained "$label" "$round" "$admin"
  stop_last
}

# The loops count writes answered; their copies may still wait in the journal. How long after
# the open loop the journal held no unsettled copy (at most 300 s), and how many it held then.
drained() {
  local label=$1 round=$2 admin=$3 waited=0 left first=""
  while [ "$waited" -lt 3000 ]; do
    left=$(curl -s "$admin/metrics" | awk '/^tandem_journal_unsettled_records / {print $2}')
    [ -z "$first" ] && first=${left:-?}
    [ "${left:-1}" = 0 ] && break
    sleep 0.1; waited=$((waited + 1))
  done
  echo "  $label, round $round: $first copies waiting when the open loop ended, none after $((waited / 10)).$((waited % 10)) s (left: ${left:-?})" | tee -a "$work/tails" >&2
}

labels=(direct)
for mode in $modes; do
  if [ "$mode" = direct-fsync ]; then labels+=("direct, fsync every second beside it"); continue; fi
  if [ "$mode" = nginx-mirror ]; then labels+=("nginx mirror"); continue; fi
  for build in "${builds[@]}"; do
    runs_mode "${build#*=}" "$mode" || continue
    label="$mode"
    [ "${#builds[@]}" -gt 1 ] && label="$mode ${build%%=*}"
    labels+=("$label")
  done
done

for round in $(seq 1 "$rounds"); do
  measure direct "$round" "$old"
  for mode in $modes; do
    if [ "$mode" = direct-fsync ]; then direct_with_fsync "$round"; continue; fi
    if [ "$mode" = nginx-mirror ]; then nginx_run "$round"; continue; fi
    # Builds in turn, the order reversed every other round.
    order=("${builds[@]}")
    if [ $(( round % 2 )) -eq 0 ]; then
      order=(); for (( i=${#builds[@]}-1; i>=0; i-- )); do order+=("${builds[$i]}"); done
    fi
    for build in "${order[@]}"; do
      runs_mode "${build#*=}" "$mode" || continue
      label="$mode"
      [ "${#builds[@]}" -gt 1 ] && label="$mode ${build%%=*}"
      proxy_run "$label" "$round" "${build#*=}" "$mode"
    done
  done
done

echo
[ -f "$work/tails" ] && cat "$work/tails"
echo
echo "$rounds rounds; open loop $rate requests/s for $duration; closed loop $clients clients for $closed; mix $mix; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| path | throughput (req/s) | vs direct | p50 (ms) | p99 (ms) | added p99 vs direct (ms) | p99.9 (ms) | max (ms) | p99 each round (ms) | errors |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
python3 - "$results" "${labels[@]}" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
def med(label, column):
    return statistics.median(float(r[column]) for r in rows if r[0] == label)
direct_tp, direct_p99 = med("direct", 2), med("direct", 4)
for label in sys.argv[2:]:
    mine = [r for r in rows if r[0] == label]
    each = " / ".join(r[4] for r in mine)
    errors = sum(int(r[7]) for r in mine)
    print(f"| {label} | {med(label, 2):.0f} | {med(label, 2) / direct_tp:.2f} | {med(label, 3):.3f} | "
          f"{med(label, 4):.3f} | {med(label, 4) - direct_p99:+.2f} | {med(label, 5):.3f} | {med(label, 6):.1f} | {each} | {errors} |")
PY
