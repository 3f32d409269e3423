#!/usr/bin/env bash
# Benchmark of `tandem compare` on a key that needs a cast to order: MariaDB CHAR(36) holding
# UUIDs (utf8mb4's default, case-insensitive collation) against PostgreSQL `uuid`. Before the
# keys were read in the column's own order, every window re-scanned and re-sorted the table, so
# time grew with rows x windows.
#
#   comparator/bench/uuid-text-keys.sh [ROWS] [WINDOW_ROWS]     (default 1000000 and 10000)
#   TANDEM=path/to/tandem ...                                     (default target/release/tandem)
#   COLLATION=utf8mb4_bin ...       (a binary collation: the key is ordered LOWER(token), which
#                                    no index serves, so each side is read in one ordered pass)
#
# Loopback only; creates two uniquely named databases and drops them at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
rows=${1:-1000000}
window=${2:-10000}
tandem=${TANDEM:-target/release/tandem}
db="tandem_bench_uuid_$$_$(date +%s)"

psql_do() { psql -h 127.0.0.1 -U postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
maria_do() { mysql -h 127.0.0.1 -u root "$@"; }
cleanup() {
  psql_do -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  maria_do -e "DROP DATABASE IF EXISTS $db" || true
}
trap cleanup EXIT

if [ -z "${TANDEM:-}" ]; then cargo build --release --quiet --bin tandem; fi
maria_do -e "CREATE DATABASE $db CHARACTER SET utf8mb4"
maria_do "$db" -e "CREATE TABLE tokens (token CHAR(36) COLLATE ${COLLATION:-utf8mb4_general_ci} PRIMARY KEY, n INT NOT NULL);
  INSERT INTO tokens SELECT CONCAT_WS('-', SUBSTR(h, 1, 8), SUBSTR(h, 9, 4), SUBSTR(h, 13, 4),
    SUBSTR(h, 17, 4), SUBSTR(h, 21, 12)), seq FROM (SELECT MD5(seq) AS h, seq FROM seq_1_to_$rows) s;"
psql_do -d postgres -c "CREATE DATABASE $db"
psql_do -d "$db" -c "CREATE TABLE tokens (token UUID PRIMARY KEY, n INT NOT NULL);
  INSERT INTO tokens SELECT md5(g::text)::uuid, g FROM generate_series(1, $rows) g;"

start=$(date +%s.%N)
TANDEM_LOG=${TANDEM_LOG:-error} /usr/bin/time -f "%M" -o /tmp/$db.rss "$tandem" compare --old "mysql://root@127.0.0.1/$db" \
  --new "postgres://postgres@127.0.0.1:5432/$db" --window-rows "$window" --recheck 0 \
  --format json > /tmp/$db.json
end=$(date +%s.%N)
grep -q '"identical": true' /tmp/$db.json || { echo "not identical:"; head -c 2000 /tmp/$db.json; exit 1; }
printf '| %s | %s | %.2f | %s |\n' "$rows" "$window" "$(echo "$end - $start" | bc)" \
  "$(( $(cat /tmp/$db.rss) / 1024 )) MB"
rm -f /tmp/$db.json /tmp/$db.rss
