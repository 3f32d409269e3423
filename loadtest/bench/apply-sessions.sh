#!/usr/bin/env bash
# How fast the WAL capture applies a backlog to the other side, by number of apply sessions
# (`tandem pg-proxy --apply-sessions N`; 1 is the single session). For each N, in one run:
# tandem starts in dual-write with `--capture wal` (its slot made), stops; pgbench writes
# DURATION seconds of single-row updates of random accounts straight into old (the slot keeps
# them); tandem starts again with N sessions and the time until it applied every one of them
# is measured (tandem's start included). The sides are then compared with `tandem compare`,
# which must find them identical.
#
#   SKIP_BUILD=1 SESSIONS="1 2 4" DURATION=15 ROUNDS=3 loadtest/bench/apply-sessions.sh
#
# DELAY_MS=5 puts new behind a forwarder that delays everything by that much each way (a
# server across a network; loadtest/bench/delay-proxy.py). FOREIGN_KEYS=1 gives pgbench's
# tables their foreign keys (the set path then leaves them to the row path: a statement per
# row change).
# WORKLOAD=tpcb writes pgbench's TPC-B instead (every transaction touches a branch, a teller,
# an account and the keyless history: serial, so the sessions beyond the first stay idle).
# Servers: the two logical clusters of scripts/ensure-logical-pg (old :5433, new :5434).
# Loopback only; creates uniquely named databases and drops them; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PGSSLMODE=disable
sessions_list=${SESSIONS:-1 2 4}
duration=${DURATION:-15}
clients=${CLIENTS:-8}
scale=${SCALE:-10}
rounds=${ROUNDS:-1}
workload=${WORKLOAD:-updates}
delay_ms=${DELAY_MS:-0}
init_steps=dtgvp
[ -n "${FOREIGN_KEYS:-}" ] && init_steps=dtgvpf
old_port=5433
new_port=5434
. loadtest/bench/two-sides.sh apb

make_logical_sides
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
for pair in "$old_port:$old_db" "$new_port:$new_db"; do
  # Without foreign keys (pgbench's default); the history table is found by all its columns.
  pgbench -h 127.0.0.1 -p "${pair%%:*}" -U postgres -i -q -I "$init_steps" -s "$scale" "${pair#*:}" >/dev/null 2>&1
  psql -h 127.0.0.1 -p "${pair%%:*}" -U postgres -X -q -d "${pair#*:}" -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL"
done
cat >"$work/updates.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SQL
new_via=$new_port
if [ "$delay_ms" != 0 ]; then
  new_via=$(free_port)
  python3 loadtest/bench/delay-proxy.py "$new_via" "$new_port" "$delay_ms" &
  pids+=($!)
  sleep 0.5
fi
control="$work/control.db"
TANDEM_LOG=warn "$bin/tandem" stage set dual-write --force --reason benchmark --by bench --control-db "sqlite://$control" >/dev/null
admin=""
# start_tandem N: pg-proxy in dual-write with N apply sessions, once it is ready.
start_tandem() {
  local port
  port=$(free_port); admin=$(free_port)
  "$bin/tandem" pg-proxy --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --old "postgres://postgres@127.0.0.1:$old_port/$old_db" \
    --new "postgres://postgres@127.0.0.1:$new_via/$new_db" --control-db "sqlite://$control" \
    --capture wal --capture-slot "$slot" --capture-publication "$slot" --apply-sessions "$1" >>"$work/tandem.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ] && return 0
    sleep 0.05
  done
  echo "tandem did not become ready:" >&2; tail -20 "$work/tandem.out" >&2; exit 1
}
stop_tandem() { kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }
applied() { curl -s "http://127.0.0.1:$admin/metrics" | awk '/^tandem_capture_transactions_total/ { print $2 }'; }

declare -A rates
echo "catch-up of a backlog of ${duration} s of pgbench ($workload, $clients clients, scale $scale, init steps $init_steps) written straight into old; old :$old_port, new :$new_port, ${delay_ms} ms each way to new"
for round in $(seq 1 "$rounds"); do
  for sessions in $sessions_list; do
    start_tandem "$sessions"
    stop_tandem
    flags=(-n -c "$clients" -j 2 -T "$duration" -M prepared)
    [ "$workload" = updates ] && flags+=(-f "$work/updates.sql" -D "scale=$scale")
    out=$(pgbench -h 127.0.0.1 -p "$old_port" -U postgres "${flags[@]}" "$old_db" 2>&1)
    count=$(echo "$out" | awk '/^number of transactions actually processed/ { split($6, n, "/"); print n[1] }')
    started=$(date +%s.%N)
    start_tandem "$sessions"
    waited=0
    # (The counter appears with the first transaction applied.)
    while awk -v a="$(applied)" -v c="$count" 'BEGIN { exit !(a == "" || a + 0 < c + 0) }' && [ "$waited" -lt 6000 ]; do
      sleep 0.1; waited=$((waited + 1))
    done
    ended=$(date +%s.%N)
    stop_tandem
    if ! TANDEM_LOG=warn "$bin/tandem" compare --old "postgres://postgres@127.0.0.1:$old_port/$old_db" \
      --new "postgres://postgres@127.0.0.1:$new_port/$new_db" --table pgbench_accounts \
      --table pgbench_branches --table pgbench_tellers --table pgbench_history >"$work/compare.out" 2>&1; then
      echo "the sides differ after $sessions session(s):" >&2; cat "$work/compare.out" >&2; exit 1
    fi
    rate=$(awk -v c="$count" -v s="$started" -v e="$ended" 'BEGIN { printf "%.0f", c / (e - s) }')
    rates["$sessions"]+="$rate "
    echo "round $round, $sessions apply session(s): $count transactions applied in $(awk -v s="$started" -v e="$ended" 'BEGIN { printf "%.1f", e - s }') s = $rate/s; identical"
  done
done
echo
echo "| apply sessions | transactions applied per second (each round) | median | vs 1 |"
echo "| --- | --- | --- | --- |"
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
base=$(echo "${rates[1]:-}" | median)
for sessions in $sessions_list; do
  m=$(echo "${rates[$sessions]}" | median)
  ratio=$( [ -n "$base" ] && awk -v m="$m" -v b="$base" 'BEGIN { printf "%.2fx", m / b }' || echo -)
  echo "| $sessions | ${rates[$sessions]} | $m | $ratio |"
done
