#!/usr/bin/env bash
# Benchmark of `tandem backfill` PostgreSQL -> PostgreSQL (same machine) into an empty table,
# side by side in one run with the floor, `COPY items TO STDOUT | COPY items FROM STDIN`
# between the same databases; then a rerun of the backfill over the migrated table beside
# `tandem compare` on it. Prints a Markdown table (paste it into docs/benchmarks.md).
#
#   comparator/bench/backfill-vs-copy.sh [ROWS]      (default 1000000; THREADS=2 CHUNK=50000 TANDEM=binary)
#
# Loopback only; creates three uniquely named databases and drops them at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=${1:-1000000}
threads=${THREADS:-2}
chunk=${CHUNK:-50000}
server=postgres://postgres@127.0.0.1:5432
suffix="$$_$(date +%s)"
old_db="tandem_bf_old_$suffix"
new_db="tandem_bf_new_$suffix"
floor_db="tandem_bf_floor_$suffix"
work=$(mktemp -d)

psql_do() { psql -h 127.0.0.1 -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
  for db in "$old_db" "$new_db" "$floor_db"; do
    psql_do -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

scripts/ensure-services
# TANDEM=path/to/tandem measures that build instead (e.g. the previous commit's, for before/after).
tandem=${TANDEM:-}
if [ -z "$tandem" ]; then
  cargo build --release --quiet --bin tandem
  tandem=${CARGO_TARGET_DIR:-target}/release/tandem
fi

schema="CREATE TABLE items (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC(12,2) NOT NULL,
  status TEXT NOT NULL, note TEXT, created_at TIMESTAMPTZ NOT NULL, qty INTEGER NOT NULL);"
for db in "$old_db" "$new_db" "$floor_db"; do
  psql_do -d postgres -c "CREATE DATABASE $db"
  psql_do -d "$db" -c "$schema"
done
psql_do -d "$old_db" -c "INSERT INTO items SELECT g, 'customer-' || (g % 9973), (g % 100000) / 100.0,
  (ARRAY['open','paid','shipped'])[1 + g % 3], CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END,
  timestamptz '2026-01-01' + g * interval '1 second', g % 17 FROM generate_series(1, $rows) g" \
  -c "VACUUM ANALYZE items"

# "SECONDS KB" of a command, started after a checkpoint (so the write-ahead log an earlier step
# left does not get flushed during this one)
measure() {
  psql_do -d postgres -c CHECKPOINT
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || {
    cat "$work/err" >&2
    exit 1
  }
  tail -n 1 "$work/time"
}
floor() {
  psql_do -d "$old_db" -c "COPY items TO STDOUT" | psql_do -d "$floor_db" -c "COPY items FROM STDIN"
}
export -f floor psql_do
export old_db floor_db
backfill=("$tandem" backfill --old "$server/$old_db" --new "$server/$new_db" --table items
  --control-db "sqlite://$work/control.db" --threads "$threads" --chunk-rows "$chunk")

read -r floor_s floor_kb < <(measure bash -c floor)
read -r fill_s fill_kb < <(measure "${backfill[@]}")
# The fill's pages are read once before the rerun and compare are timed (as the check a user
# runs after a fill reads them): the first read of freshly copied rows sets their hint bits,
# writing every page again, which would otherwise be charged to whichever of the two ran first.
"$tandem" compare --old "$server/$old_db" --new "$server/$new_db" --table items >/dev/null
read -r rerun_s rerun_kb < <(measure "${backfill[@]}" --restart)
read -r compare_s compare_kb < <(measure "$tandem" compare --old "$server/$old_db" --new "$server/$new_db" --table items)
"$tandem" compare --old "$server/$old_db" --new "$server/$new_db" --table items >/dev/null

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "| $rows rows, PostgreSQL -> PostgreSQL | seconds | rows/s | max RSS MB | ratio |"
echo "| --- | --- | --- | --- | --- |"
echo "| floor: COPY TO STDOUT \| COPY FROM STDIN | $floor_s | $(awk -v r="$rows" -v s="$floor_s" 'BEGIN { printf "%d", r / s }') | $((floor_kb / 1024)) | 1.00 |"
echo "| tandem backfill into an empty table (--threads $threads, --chunk-rows $chunk) | $fill_s | $(awk -v r="$rows" -v s="$fill_s" 'BEGIN { printf "%d", r / s }') | $((fill_kb / 1024)) | $(ratio "$fill_s" "$floor_s") × floor |"
echo "| tandem compare on the migrated table | $compare_s | | $((compare_kb / 1024)) | 1.00 |"
echo "| tandem backfill --restart on the migrated table | $rerun_s | | $((rerun_kb / 1024)) | $(ratio "$rerun_s" "$compare_s") × compare |"
