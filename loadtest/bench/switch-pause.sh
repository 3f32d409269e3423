#!/usr/bin/env bash
# What a change of authoritative side costs the clients of `tandem pg-proxy --capture wal`:
# pgbench TPC-B (CLIENTS=8, prepared statements, a log line per transaction) through tandem in
# `shadow` for DURATION (30 s); `shadow → live` at a third of it and `live → shadow` at two
# thirds. Each switch holds new transactions at their start until the side taking over has
# applied everything up to the side before's position, so the clients see a pause, never an
# error. From pgbench's per-transaction log it reports, for each switch: how long it took
# (from the stage change to tandem's "sessions are served by" line), the capture's lag just
# before it (the walsender's replay_lag), the longest transaction that ended around it, and
# the run's p50/p99 away from the switches; the failed transactions (0 expected); and whether
# `tandem compare` finds pgbench's tables identical afterwards.
#
#   loadtest/bench/switch-pause.sh                       (DURATION=30 CLIENTS=8 SCALE=5)
#   KEEP_LOG=/tmp/tandem.log loadtest/bench/switch-pause.sh   (keeps tandem's log)
#
# Runs against the wal_level = logical clusters of scripts/ensure-logical-pg (old on :5433,
# new on :5434). Loopback only; creates uniquely named databases and drops them; stops what it
# starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PGSSLMODE=disable
old_port=5433; new_port=5434
duration=${DURATION:-30}
clients=${CLIENTS:-8}
scale=${SCALE:-5}
. loadtest/bench/two-sides.sh switch

make_logical_sides
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/tandem
for pair in "$old_port:$old_db" "$new_port:$new_db"; do
  pgbench -h 127.0.0.1 -p "${pair%%:*}" -U postgres -i -q -s "$scale" "${pair#*:}" >/dev/null 2>&1
  psql -h 127.0.0.1 -p "${pair%%:*}" -U postgres -X -q -d "${pair#*:}" -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL"
done
port=$(free_port); admin=$(free_port); control="sqlite://$work/control.db"
old_url="postgres://postgres@127.0.0.1:$old_port/$old_db"
new_url="postgres://postgres@127.0.0.1:$new_port/$new_db"
stage() { TANDEM_LOG=warn "$bin" stage set "$1" --force --reason benchmark --by bench --control-db "$control" >/dev/null; }
stage shadow
"$bin" pg-proxy --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --old "$old_url" \
  --new "$new_url" --control-db "$control" --capture wal --capture-slot "$slot" \
  --capture-publication "$slot" >"$work/tandem.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.05; done

# switch STAGE SIDE: changes the stage, then waits for tandem to serve SIDE; prints the
# capture's replay lag just before, the change's time and the time it was served.
served() { grep -c "sessions are served by the $1 side" "$work/tandem.out" || true; }
switch() {
  local stage=$1 side=$2 from_port=$old_port lag began before
  [ "$side" = old ] && from_port=$new_port
  lag=$(psql_on "$from_port" -At -c "SELECT coalesce(extract(epoch FROM max(replay_lag))::text, '-') FROM pg_stat_replication")
  before=$(served "$side")
  began=$(date +%s.%N)
  stage "$stage"
  for _ in $(seq 1 1200); do
    [ "$(served "$side")" -gt "$before" ] && break
    sleep 0.02
  done
  echo "$stage $lag $began $(date +%s.%N)"
}
pgbench -h 127.0.0.1 -p "$port" -U postgres -M prepared -c "$clients" -j 2 -T "$duration" -n \
  --log --log-prefix="$work/tx" "$old_db" >"$work/pgbench.out" 2>&1 &
load=$!
third=$(awk -v d="$duration" 'BEGIN { print d / 3 }')
sleep "$third"
first=$(switch live new)
sleep "$third"
second=$(switch shadow old)
wait "$load" || true
# Every line of the transaction log: latency (µs) in field 3, the end in fields 5 and 6.
cat "$work"/tx.* >"$work/all.log"

echo "pgbench -M prepared, $clients clients, ${duration} s, scale $scale, through tandem pg-proxy --capture wal; shadow → live at a third, live → shadow at two thirds"
echo
echo "| switch | capture lag before (s) | switch took (s) | longest transaction ending within it or 1 s after (ms) | transactions ending then |"
echo "| --- | --- | --- | --- | --- |"
for row in "$first" "$second"; do
  read -r to lag began done <<<"$row"
  awk -v to="$to" -v lag="$lag" -v b="$began" -v d="$done" '
    { end = $5 + $6 / 1e6 } end >= b && end <= d + 1 { n++; if ($3 > most) most = $3 }
    END { printf "| to %s | %s | %.3f | %.1f | %d |\n", to, lag, d - b, most / 1000, n }' "$work/all.log"
done
read -r _ _ b1 d1 <<<"$first"; read -r _ _ b2 d2 <<<"$second"
awk -v b1="$b1" -v d1="$d1" -v b2="$b2" -v d2="$d2" '
  { end = $5 + $6 / 1e6 } (end < b1 - 1 || end > d1 + 2) && (end < b2 - 1 || end > d2 + 2) { print $3 }' \
  "$work/all.log" | sort -n | awk '{ v[NR] = $1 } END { printf "\naway from the switches: %d transactions, p50 %.1f ms, p99 %.1f ms, longest %.1f ms\n", NR, v[int(NR * 0.5)] / 1000, v[int(NR * 0.99)] / 1000, v[NR] / 1000 }'
grep -E "^(tps|number of failed transactions)" "$work/pgbench.out" || true
# Identical afterwards (once the capture caught up).
identical=yes
sleep 2
for table in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
  if ! TANDEM_LOG=warn "$bin" compare --old "$old_url" --new "$new_url" --table "$table" \
      --recheck 3 --recheck-delay 1s >/dev/null; then
    identical="no ($table differs)"
  fi
done
echo "tandem compare of pgbench's tables afterwards: identical = $identical"
# KEEP_LOG=path keeps tandem's log (the switches' steps, with their times).
[ -z "${KEEP_LOG:-}" ] || cp "$work/tandem.out" "$KEEP_LOG"
