# Sourced by the proxy benchmarks: the processes a run starts, kept in $pids, their output in
# $work, and the databases it creates ($dbs); `cleanup` (the callers' EXIT trap) stops and drops
# what is left.

psql_do() { psql -h 127.0.0.1 -U postgres -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }

# Stops every process still running (nginx too), drops the run's databases, removes $work.
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  for db in "${dbs[@]}"; do psql_do -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; done
  rm -rf "$work"
}

# Starts a process in the background (not in a subshell, so that its pid is kept) and sets
# $line to the first stdout line containing $2.
start() {
  local log=$1 needle=$2; shift 2
  "$@" >"$work/$log.out" 2>"$work/$log.err" &
  pids+=($!)
  for _ in $(seq 1 200); do
    if grep -q "$needle" "$work/$log.out" 2>/dev/null; then line=$(grep -m1 "$needle" "$work/$log.out"); return 0; fi
    sleep 0.05
  done
  echo "$log did not start:" >&2; cat "$work/$log.err" >&2; exit 1
}

# Stops the process started last (SIGTERM) and waits for it.
stop_last() {
  local last=$(( ${#pids[@]} - 1 ))
  kill -TERM "${pids[$last]}"; wait "${pids[$last]}" 2>/dev/null || true
  pids=("${pids[@]:0:$last}")
}
