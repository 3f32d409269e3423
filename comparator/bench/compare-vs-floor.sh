#!/usr/bin/env bash
# Benchmark of `tandem compare` on PostgreSQL <-> PostgreSQL (same machine), side by side in one
# run with (a) the floor, both tables read with COPY ... TO STDOUT in parallel, and (b) reladiff
# (PyPI) on the same tables; for identical tables and after 0.1% of rows were changed, deleted
# or inserted at scattered keys. Prints a Markdown table (paste it into docs/benchmarks.md).
#
#   comparator/bench/compare-vs-floor.sh [ROWS]        (default 1000000; RUNS=3 runs each, median)
#   RELADIFF=0 RUNS=1 comparator/bench/compare-vs-floor.sh 10000000   (memory on a large table;
#                                                                     reladiff left out)
#
# Loopback only; creates two uniquely named databases and drops them at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=${1:-1000000}
server=postgres://postgres@127.0.0.1:5432
suffix="$$_$(date +%s)"
old_db="tandem_bench_old_$suffix"
new_db="tandem_bench_new_$suffix"
venv=target/bench-venv

psql_do() { psql -h 127.0.0.1 -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
cleanup() {
  psql_do -d postgres -c "DROP DATABASE IF EXISTS $old_db WITH (FORCE)" -c "DROP DATABASE IF EXISTS $new_db WITH (FORCE)" || true
}
trap cleanup EXIT

scripts/ensure-services
cargo build --release --quiet --bin tandem
if [ ! -x "$venv/bin/reladiff" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet reladiff psycopg2-binary
fi

psql_do -d postgres -c "CREATE DATABASE $old_db" -c "CREATE DATABASE $new_db"
# Even ids only, so that inserted rows can land between existing keys.
load="CREATE TABLE items (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC(12,2) NOT NULL,
  status TEXT NOT NULL, note TEXT, created_at TIMESTAMPTZ NOT NULL, qty INTEGER NOT NULL);
INSERT INTO items SELECT 2 * g, 'customer-' || (g % 9973), (g % 100000) / 100.0,
  (ARRAY['open','paid','shipped'])[1 + g % 3], CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END,
  timestamptz '2026-01-01' + g * interval '1 second', g % 17 FROM generate_series(1, $rows) g;"
psql_do -d "$old_db" -c "$load" & psql_do -d "$new_db" -c "$load" & wait
psql_do -d "$old_db" -c "VACUUM ANALYZE items" & psql_do -d "$new_db" -c "VACUUM ANALYZE items" & wait

# seconds and max RSS (KB) of a command, as "SECONDS KB": the median of $runs runs
runs=${RUNS:-3}
measure() {
  for _ in $(seq 1 "$runs"); do
    /usr/bin/time -f "%e %M" -o "$tmp" "$@" >/dev/null 2>&1 || true
    tail -n 1 "$tmp"
  done | sort -n | sed -n "$(( (runs + 1) / 2 ))p"
}
tmp=$(mktemp)
floor() {
  psql_do -d "$old_db" -c "COPY items TO STDOUT" >/dev/null &
  psql_do -d "$new_db" -c "COPY items TO STDOUT" >/dev/null &
  wait
}
export -f floor psql_do
export old_db new_db server
tandem_compare() {
  target/release/tandem compare --old "$server/$old_db" --new "$server/$new_db" --recheck 0 --format json
}
reladiff_compare() {
  "$venv/bin/reladiff" "postgresql://postgres@127.0.0.1/$old_db" items \
    "postgresql://postgres@127.0.0.1/$new_db" items -k id \
    -c customer -c amount -c status -c note -c created_at -c qty
}

report_row() {
  local label=$1 floor_s=$2 tandem=$3 reladiff=$4
  local tandem_s=${tandem% *} tandem_kb=${tandem#* } reladiff_s=${reladiff% *} reladiff_kb=${reladiff#* }
  if [ "$with_reladiff" = 1 ]; then
    printf '| %s | %s | %s (%s MB) | %s (%s MB) | %.2f | %.1f |\n' "$label" "$floor_s" \
      "$tandem_s" "$((tandem_kb / 1024))" "$reladiff_s" "$((reladiff_kb / 1024))" \
      "$(echo "$tandem_s / $floor_s" | bc -l)" "$(echo "$reladiff_s / $tandem_s" | bc -l)"
  else
    printf '| %s | %s | %s (%s MB) | not run | %.2f | - |\n' "$label" "$floor_s" \
      "$tandem_s" "$((tandem_kb / 1024))" "$(echo "$tandem_s / $floor_s" | bc -l)"
  fi
}

floor_identical=$(measure bash -c floor); floor_identical=${floor_identical% *}
tandem_identical=$(measure bash -c "$(declare -f tandem_compare); tandem_compare")
with_reladiff=${RELADIFF:-1}
reladiff_measure() {
  if [ "$with_reladiff" = 1 ]; then
    measure bash -c "$(declare -f reladiff_compare); venv=$venv; reladiff_compare"
  else
    echo "0 0"
  fi
}
reladiff_identical=$(reladiff_measure)

changed=$((rows / 2000)); deleted=$((rows / 4000)); inserted=$((rows / 4000))
# Scattered keys from multiplicative hashing; inserted ids are odd, between existing even ids.
changed_ids="SELECT DISTINCT 2 * (1 + (g::bigint * 7919) % $rows) AS id FROM generate_series(1, $changed) g"
deleted_ids="SELECT DISTINCT 2 * (1 + (g::bigint * 104729) % $rows) AS id FROM generate_series(1, $deleted) g"
inserted_ids="SELECT DISTINCT 2 * (1 + (g::bigint * 15485863) % $rows) + 1 AS id FROM generate_series(1, $inserted) g"
psql_do -d "$new_db" \
  -c "UPDATE items SET amount = amount + 1 WHERE id IN ($changed_ids)" \
  -c "DELETE FROM items WHERE id IN ($deleted_ids)" \
  -c "INSERT INTO items SELECT id, 'new', 1, 'open', NULL, now(), 1 FROM ($inserted_ids) i" \
  -c "VACUUM ANALYZE items"
expected=$(psql_do -d "$new_db" -At -F ' ' -c "SELECT (SELECT count(*) FROM ($deleted_ids) d),
  (SELECT count(*) FROM ($inserted_ids) i),
  (SELECT count(*) FROM ($changed_ids) c WHERE id NOT IN ($deleted_ids))")

floor_drift=$(measure bash -c floor); floor_drift=${floor_drift% *}
tandem_drift=$(measure bash -c "$(declare -f tandem_compare); tandem_compare")
reladiff_drift=$(reladiff_measure)
found=$(tandem_compare | python3 -c 'import json,sys; t=json.load(sys.stdin)["tables"][0]; print(t["missing_in_new"], t["extra_in_new"], t["changed"])' || true)

echo
echo "rows per table: $rows; drift injected (missing, extra, changed): $expected; tandem found: $found"
[ "$found" = "$expected" ] || { echo "tandem's counts differ from the injected drift" >&2; exit 1; }
echo
echo "| tables | floor: parallel COPY (s) | tandem compare (s, max RSS) | reladiff (s, max RSS) | tandem / floor | reladiff / tandem |"
echo "| --- | --- | --- | --- | --- | --- |"
report_row identical "$floor_identical" "$tandem_identical" "$reladiff_identical"
report_row "0.1% drift" "$floor_drift" "$tandem_drift" "$reladiff_drift"
rm -f "$tmp"
