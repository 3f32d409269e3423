#!/usr/bin/env bash
# Benchmark of `tandem backfill` MariaDB -> PostgreSQL (same machine) into an empty table,
# side by side in one run with pgloader (Debian package `pgloader`) loading the same table into
# another PostgreSQL database; both results are then compared with the old side by
# `tandem compare`. Prints a Markdown table (paste it into docs/benchmarks.md).
#
#   comparator/bench/backfill-vs-pgloader.sh [ROWS]      (default 1000000; THREADS=2 CHUNK=50000 TANDEM=binary)
#
# Loopback only; creates uniquely named databases and drops them at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=${1:-1000000}
threads=${THREADS:-2}
chunk=${CHUNK:-50000}
pg=postgres://postgres@127.0.0.1:5432
suffix="$$_$(date +%s)"
maria_db="tandem_bf_maria_$suffix"
new_db="tandem_bf_new_$suffix"
loader_db="tandem_bf_loader_$suffix"
work=$(mktemp -d)

psql_do() { psql -h 127.0.0.1 -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
maria_do() { mariadb -h 127.0.0.1 -u root "$@"; }
cleanup() {
  maria_do -e "DROP DATABASE IF EXISTS $maria_db" || true
  for db in "$new_db" "$loader_db"; do
    psql_do -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

command -v pgloader >/dev/null || { echo "apt-get install pgloader first" >&2; exit 1; }
scripts/ensure-services
# TANDEM=path/to/tandem measures that build instead (e.g. the previous commit's, for before/after).
tandem=${TANDEM:-}
if [ -z "$tandem" ]; then
  cargo build --release --quiet --bin tandem
  tandem=${CARGO_TARGET_DIR:-target}/release/tandem
fi

maria_do -e "CREATE DATABASE $maria_db"
maria_do "$maria_db" -e "CREATE TABLE items (id BIGINT PRIMARY KEY, customer VARCHAR(40) NOT NULL,
  amount DECIMAL(12,2) NOT NULL, status VARCHAR(10) NOT NULL, note TEXT,
  created_at DATETIME(6) NOT NULL, qty INT NOT NULL);
  INSERT INTO items SELECT seq, CONCAT('customer-', seq % 9973), (seq % 100000) / 100.0,
  ELT(1 + seq % 3, 'open', 'paid', 'shipped'), IF(seq % 5 = 0, NULL, CONCAT('note ', seq)),
  TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND, seq % 17 FROM seq_1_to_$rows;
  ANALYZE TABLE items;" >/dev/null
psql_do -d postgres -c "CREATE DATABASE $new_db" -c "CREATE DATABASE $loader_db"
psql_do -d "$new_db" -c "CREATE TABLE items (id BIGINT PRIMARY KEY, customer VARCHAR(40) NOT NULL,
  amount NUMERIC(12,2) NOT NULL, status VARCHAR(10) NOT NULL, note TEXT,
  created_at TIMESTAMP NOT NULL, qty INTEGER NOT NULL)"
cat >"$work/load" <<LOAD
LOAD DATABASE FROM mysql://root@127.0.0.1/$maria_db INTO $pg/$loader_db
  ALTER SCHEMA '$maria_db' RENAME TO 'public';
LOAD

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
read -r loader_s loader_kb < <(measure pgloader "$work/load")
read -r fill_s fill_kb < <(measure "$tandem" backfill --old "mysql://root@127.0.0.1/$maria_db" \
  --new "$pg/$new_db" --table items --control-db "sqlite://$work/control.db" \
  --threads "$threads" --chunk-rows "$chunk")
for db in "$new_db" "$loader_db"; do
  "$tandem" compare --old "mysql://root@127.0.0.1/$maria_db" --new "$pg/$db" --table items >/dev/null \
    && echo "$db: identical to the old side" >&2
done

rate() { awk -v r="$rows" -v s="$1" 'BEGIN { printf "%d", r / s }'; }
echo "| $rows rows, MariaDB -> PostgreSQL | seconds | rows/s | max RSS MB | rate vs pgloader |"
echo "| --- | --- | --- | --- | --- |"
echo "| pgloader (creates the table) | $loader_s | $(rate "$loader_s") | $((loader_kb / 1024)) | 1.00 |"
echo "| tandem backfill (--threads $threads, --chunk-rows $chunk) | $fill_s | $(rate "$fill_s") | $((fill_kb / 1024)) | $(awk -v a="$loader_s" -v b="$fill_s" 'BEGIN { printf "%.2f", a / b }') |"
