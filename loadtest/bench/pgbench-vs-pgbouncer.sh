#!/usr/bin/env bash
# What tandem's PostgreSQL proxy costs, side by side in one run: pgbench (built-in TPC-B-like,
# -S select-only, and -S -C with a new connection per transaction, where pooling counts;
# prepared protocol) directly against PostgreSQL, through `tandem pg-proxy`
# in old-only, dual-write, shadow and live, and through pgbouncer (Debian's package, session
# pooling). Prints a Markdown table for docs/benchmarks.md, and checks after each mirroring
# stage's run that it left the two databases identical. In shadow, tandem also runs each
# read-only transaction on new and compares the answers; in live, new serves and old is the
# mirror (with CAPTURE=wal, captured from new's slot).
#
#   loadtest/bench/pgbench-vs-pgbouncer.sh          (DURATION=10 CLIENTS=8 SCALE=5 RUNS=1)
#   CAPTURE=wal loadtest/bench/pgbench-vs-pgbouncer.sh
#
# CAPTURE=wal runs every path against the wal_level = logical clusters of
# scripts/ensure-logical-pg (old on :5433, new on :5434) and dual-write with `--capture wal`,
# and reports the capture's apply delay (source commit to applied on new) at p50/p99.
# LOGICAL=1 runs statement capture against those same clusters: with CAPTURE=wal in another
# invocation, what the capture itself changes on the same servers (e.g. shadow and live
# read-only traffic, WORKLOADS=select PATHS="shadow live").
#
# RUNS=3 runs every cell three times and reports the median (this machine's cells vary by
# ±20% from one run to the next).
#
# To iterate on one part: WORKLOADS="tpcb" (of tpcb select connect) and PATHS="dual-write"
# (of direct old-only pgbouncer dual-write shadow live) run only those cells (the others
# print "-").
# BEFORE_BIN=/path/to/an/older/tandem adds a dual-write row run with that binary, on
# databases initialised afresh, in the same run: before and after side by side.
# SHADOW_COMPARE_READS="0.1 0.5" adds a shadow row for each fraction of reads compared
# (`--compare-reads`; the plain shadow row compares every read).
#
# CPU=1 also reports, for each tandem row, the CPU seconds per thousand pgbench transactions
# of each process involved (from /proc: utime+stime, with what exited children left to their
# parents): the old server (its backends, and apart its walsender), tandem, the new server
# (the capture's apply), measured from before pgbench starts to when the mirror caught up. It
# is robust under a shared machine's load where tps is not: CPU spent per transaction does
# not depend on who else is running.
#
# Loopback only; creates uniquely named databases and drops them; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Plain TCP on every path: pgbouncer and tandem talk to the server without TLS, so the direct
# baseline must not pay for a TLS session (libpq's default sslmode=prefer would).
export PGSSLMODE=disable
capture=${CAPTURE:-statements}
old_port=5432; new_port=5432
logical=${LOGICAL:-}
[ "$capture" = wal ] && logical=1
if [ -n "$logical" ]; then old_port=5433; new_port=5434; fi
duration=${DURATION:-10}
runs=${RUNS:-1}
clients=${CLIENTS:-8}
scale=${SCALE:-5}
. loadtest/bench/two-sides.sh pgb
psql_do() { psql_on "$old_port" "$@"; }

scripts/ensure-services
[ -n "$logical" ] && scripts/ensure-logical-pg
workloads=${WORKLOADS:-tpcb select connect}
paths=${PATHS:-direct old-only pgbouncer dual-write shadow live}
wants() { [[ " $paths " == *" $1 "* ]]; }
if wants pgbouncer && ! command -v pgbouncer >/dev/null 2>&1; then
  echo "installing pgbouncer (Debian package; its system service is not started)" >&2
  sudo=""; [ "$(id -u)" != 0 ] && sudo="sudo"
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin tandem
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
psql_on "$old_port" -c "CREATE DATABASE $old_db"
psql_on "$new_port" -c "CREATE DATABASE $new_db"
init() {
  # pgbench_history has no key: with WAL capture its rows are found by all their columns.
  for pair in "$old_port:$old_db" "$new_port:$new_db"; do
    pgbench -h 127.0.0.1 -p "${pair%%:*}" -U postgres -i -q -s "$scale" "${pair#*:}" >/dev/null 2>&1
    psql -h 127.0.0.1 -p "${pair%%:*}" -U postgres -X -q -d "${pair#*:}" -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL"
  done
}
init

# ticks PID...: CPU clock ticks of these processes and of their exited, reaped children.
ticks() { local pid; for pid in "$@"; do awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || true; done | awk '{ t += $1 } END { print t + 0 }'; }
# cluster_ticks PORT: a PostgreSQL server's CPU ticks: its postmaster and every child.
postmaster_of() { head -1 "$(psql_on "$1" -At -c 'SHOW data_directory')/postmaster.pid"; }
cluster_ticks() { local pm; pm=$(postmaster_of "$1"); ticks "$pm" $(pgrep -P "$pm"); }
hz=$(getconf CLK_TCK)
declare -A cpu
declare -A transactions
declare -A tps
measure() {
  local label=$1 port=$2 db=$3
  for workload in $workloads; do
    local flags=(-M prepared -c "$clients" -j 2 -T "$duration" -n)
    [ "$workload" = select ] && flags+=(-S)
    [ "$workload" = connect ] && flags+=(-S -C)
    local out results=()
    for _ in $(seq 1 "$runs"); do
      out=$(pgbench -h 127.0.0.1 -p "$port" -U postgres "${flags[@]}" "$db" 2>&1)
      results+=("$(echo "$out" | awk '/^tps/ {printf "%.0f", $3}')")
      transactions["$label"]=$(( ${transactions[$label]:-0} + $(echo "$out" | awk '/^number of transactions actually processed/ { split($6, n, "/"); print n[1] }') ))
      echo "measured $label $workload: ${results[-1]} tps ($(echo "$out" | grep -o 'number of failed transactions: [0-9]*'))" >&2
    done
    tps["$label/$workload"]=$(printf '%s\n' "${results[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  done
}

wants direct && measure direct "$old_port" "$old_db"

# pg_proxy STAGE [LABEL BINARY]: the cells through `tandem pg-proxy` in STAGE.
runs_started=0
declare -A caught_up
pg_proxy() {
  local stage=$1 label=${2:-tandem $1} tandem_bin=${3:-$bin/tandem} port admin control=$work/control-$1-$RANDOM.db extra=(--capture statements)
  port=$(free_port); admin=$(free_port)
  # A slot and publication of its own for each run: a run must not start with the log an
  # earlier run's slot kept (the re-initialisation's rows among it).
  runs_started=$((runs_started + 1))
  [ "$capture" = wal ] && [ "$stage" != old-only ] && extra=(--capture wal --capture-slot "${slot}_$runs_started" --capture-publication "${slot}_$runs_started")
  TANDEM_LOG=warn "$tandem_bin" stage set "$stage" --force --reason benchmark --by bench --control-db "sqlite://$control" >/dev/null
  "$tandem_bin" pg-proxy --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --old "postgres://postgres@127.0.0.1:$old_port/$old_db" \
    --new "postgres://postgres@127.0.0.1:$new_port/$new_db" --control-db "sqlite://$control" "${extra[@]}" >"$work/pg-$stage.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q "listening on" "$work/pg-$stage.out" && break; sleep 0.05; done
  local old_before new_before tandem_before walsender
  sleep 1
  old_before=$(cluster_ticks "$old_port"); new_before=$(cluster_ticks "$new_port"); tandem_before=$(ticks "${pids[-1]}")
  measure "$label" "$port" "$old_db"
  if [ "$capture" = wal ] && [ "$stage" != old-only ]; then
    # Until the mirror has every pgbench_history row the serving side has (up to 10 minutes):
    # how far behind the capture ended; the delays below then count every transaction.
    local rows waited=0 history="SELECT count(*) FROM pgbench_history" from=("$old_port" "$old_db") to=("$new_port" "$new_db")
    [ "$stage" = live ] && from=("$new_port" "$new_db") to=("$old_port" "$old_db")
    rows=$(psql -h 127.0.0.1 -p "${from[0]}" -U postgres -X -At -d "${from[1]}" -c "$history")
    while [ "$(psql -h 127.0.0.1 -p "${to[0]}" -U postgres -X -At -d "${to[1]}" -c "$history")" -lt "$rows" ] && [ "$waited" -lt 600 ]; do
      sleep 1; waited=$((waited + 1))
    done
    caught_up["$label"]=$waited
  fi
  if [ -n "${CPU:-}" ]; then
    walsender=$(psql_on "$old_port" -At -c "SELECT pid FROM pg_stat_replication WHERE application_name LIKE 'tandem%' OR state = 'streaming' LIMIT 1")
    [ "$stage" = live ] && walsender=$(psql_on "$new_port" -At -c "SELECT pid FROM pg_stat_replication LIMIT 1")
    local others
    others=$( { psql_on "$old_port" -At -c "SELECT count(*) FROM pg_stat_activity WHERE datname NOT IN ('postgres', '$old_db')"; psql_on "$new_port" -At -c "SELECT count(*) FROM pg_stat_activity WHERE datname NOT IN ('postgres', '$new_db')"; } | awk '{ t += $1 } END { print t }')
    [ "$others" = 0 ] || echo "warning: $others sessions of other databases on the servers during $label: its CPU figures include theirs" >&2
    cpu["$label"]="$(( $(cluster_ticks "$old_port") - old_before )) $(ticks $walsender) $(( $(ticks "${pids[-1]}") - tandem_before )) $(( $(cluster_ticks "$new_port") - new_before ))"
  fi
  if [ "$capture" = wal ] && [ "$stage" != old-only ]; then
    curl -s "http://127.0.0.1:$admin/metrics" | grep '^tandem_capture_' >"$work/capture-${label// /_}.txt" || true
  fi
  kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
}
wants old-only && pg_proxy old-only

if wants pgbouncer; then
bouncer_port=$(free_port)
cat >"$work/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$old_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
auth_type = trust
auth_file = $work/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
unix_socket_dir =
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
echo '"postgres" ""' >"$work/users.txt"
# pgbouncer refuses to run as root: run it as the postgres user then.
as_user=()
if [ "$(id -u)" = 0 ]; then
  chmod 777 "$work"; chmod 644 "$work/pgbouncer.ini" "$work/users.txt"
  as_user=(runuser -u postgres --)
fi
"${as_user[@]}" pgbouncer -q "$work/pgbouncer.ini" &
pids+=($!)
sleep 0.5
bouncer_pid=$(cat "$work/pgbouncer.pid" 2>/dev/null || pgrep -n -x pgbouncer || true)
old_before=$(cluster_ticks "$old_port"); bouncer_before=$(ticks "$bouncer_pid")
measure pgbouncer "$bouncer_port" "$old_db"
cpu[pgbouncer]="$(( $(cluster_ticks "$old_port") - old_before )) 0 $(( $(ticks "$bouncer_pid") - bouncer_before )) 0"
fi

identical=yes
check_identical() {
  local label=$1 table
  sleep 2
  for table in pgbench_accounts pgbench_branches pgbench_tellers; do
    if ! TANDEM_LOG=warn "$bin/tandem" compare --old "postgres://postgres@127.0.0.1:$old_port/$old_db" \
        --new "postgres://postgres@127.0.0.1:$new_port/$new_db" --table "$table" --recheck 3 --recheck-delay 1s >/dev/null; then
      identical="no ($label: $table differs)"
    fi
  done
}
labels=(direct pgbouncer "tandem old-only")
# Dual-write last, on both databases initialised afresh, so that they start identical.
if [ -n "${BEFORE_BIN:-}" ] && wants dual-write; then
  init
  pg_proxy dual-write "tandem dual-write (before)" "$BEFORE_BIN"
  check_identical before
  labels+=("tandem dual-write (before)")
fi
for stage in dual-write shadow live; do
  wants "$stage" || continue
  init
  pg_proxy "$stage"
  check_identical "$stage"
  labels+=("tandem $stage")
  if [ "$stage" = shadow ]; then
    for fraction in ${SHADOW_COMPARE_READS:-}; do
      init
      TANDEM_PG_COMPARE_READS=$fraction pg_proxy shadow "tandem shadow, --compare-reads $fraction"
      check_identical "shadow $fraction"
      labels+=("tandem shadow, --compare-reads $fraction")
    done
  fi
done

echo
echo "pgbench -M prepared, $clients clients, ${duration} s each, scale $scale, median of $runs run(s) per cell, dual-write with --capture $capture (servers on :$old_port/:$new_port)"
echo
echo "| path | TPC-B-like (tps) | vs direct | vs pgbouncer | select-only -S (tps) | vs direct | vs pgbouncer | -S -C, a connection per transaction (tps) | vs direct | vs pgbouncer |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
ratio() { echo "$1 / $2" | bc -l; }
cell() { # cell VALUE BASELINE: the ratio, or "-" when either cell was not run
  if [ -n "$1" ] && [ -n "$2" ]; then printf '%.2f' "$(ratio "$1" "$2")"; else printf -- '-'; fi
}
for label in "${labels[@]}"; do
  row="| $label"
  for workload in tpcb select connect; do
    value=${tps[$label/$workload]:-}
    row+=" | ${value:--} | $(cell "$value" "${tps[direct/$workload]:-}") | $(cell "$value" "${tps[pgbouncer/$workload]:-}")"
  done
  echo "$row |"
done
echo
echo "after each dual-write, shadow and live run, tandem compare of pgbench_accounts/branches/tellers: identical = $identical"
if [ -n "${CPU:-}" ]; then
  echo
  echo "CPU seconds per 1,000 pgbench transactions (clock ticks / $hz), from before pgbench to the mirror caught up; the old server's includes its walsender's:"
  echo
  echo "| path | transactions | old server | of which walsender | tandem (pgbouncer) | new server | total |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for label in "${labels[@]}"; do
    [ -n "${cpu[$label]:-}" ] || continue
    read -r o w t n <<<"${cpu[$label]}"
    awk -v l="$label" -v x="${transactions[$label]}" -v o="$o" -v w="$w" -v t="$t" -v n="$n" -v hz="$hz" \
      'BEGIN { k = 1000 / x / hz; printf "| %s | %d | %.3f | %.3f | %.3f | %.3f | %.3f |\n", l, x, o * k, w * k, t * k, n * k, (o + t + n) * k }'
  done
fi
# The apply delay's quantiles, read from the histogram's buckets (each an upper bound).
for file in "$work"/capture-*.txt; do
  [ -s "$file" ] || continue
  name=$(basename "$file" .txt); name=${name#capture-}
  echo
  echo "${name//_/ }: the mirror had all of the serving side's pgbench_history rows ${caught_up[${name//_/ }]:-?} s after pgbench ended; capture apply delay (source commit to applied on the mirror) and batches, from /metrics:"
  awk '/^tandem_capture_apply_delay_seconds_bucket/ { match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; counts[n] = $2 }
       /^tandem_capture_apply_delay_seconds_count/ { total = $2 }
       /^tandem_capture_apply_delay_seconds_sum/ { sum = $2 }
       END { if (total == 0) exit; p50 = p99 = ""; within = 0
             for (i = 1; i <= n; i++) { if (p50 == "" && counts[i] >= 0.5 * total) p50 = les[i]; if (p99 == "" && counts[i] >= 0.99 * total) p99 = les[i]; if (les[i] == "1") within = counts[i] }
             printf "    apply delay: %d transactions, mean %.3f s, p50 <= %s s, p99 <= %s s, %.1f%% within 1 s\n", total, sum / total, p50, p99, 100 * within / total }' "$file"
  grep -E "^tandem_capture_(failures_total|changes_coalesced_total|changes_total|statements_total|set_fallbacks_total|batches_total|transactions_total|batch_transactions_(sum|count)|receive_delay_seconds_(sum|count)|apply_duration_seconds_(sum|count))" "$file" | sed "s/^/    /" || true
done
