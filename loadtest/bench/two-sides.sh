# Sourced by the benchmarks that make an old and a new database on PostgreSQL servers, as
# `. loadtest/bench/two-sides.sh NAME` once `old_port` and `new_port` are set: names the run's
# databases `$old_db` and `$new_db` (tandem_NAME_old_… / _new_…), its slot stem `$slot`, its
# directory `$work` and its processes `pids`; gives `psql_on PORT ARGS...` (the server's
# postgres database), `free_port`, `make_logical_sides`, and on exit the clean-up of what
# they started and made: the processes in `pids`, tandem's slots and replication origins named
# after `$slot`, the databases `$old_db` on `$old_port` and `$new_db` on `$new_port`, and the
# directory `$work`. The sourcing script sets those variables (`slot` at least by its exit).
suffix="$$_$(date +%s)"
old_db="tandem_${1}_old_$suffix"
new_db="tandem_${1}_new_$suffix"
slot="${1}_$suffix"
work=$(mktemp -d)
pids=()
psql_on() { local port=$1; shift; psql -h 127.0.0.1 -p "$port" -U postgres -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
# A free loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# make_logical_sides: the services and the wal_level = logical clusters, tandem's release
# build (unless SKIP_BUILD), then `$old_db` on `$old_port` and `$new_db` on `$new_port`.
make_logical_sides() {
  scripts/ensure-services
  scripts/ensure-logical-pg
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin tandem
  psql_on "$old_port" -c "CREATE DATABASE $old_db"
  psql_on "$new_port" -c "CREATE DATABASE $new_db"
}
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for port in "$old_port" "$new_port"; do
    psql_on "$port" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE '${slot}%'" \
      -c "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE 'tandem_${slot}%'" >/dev/null 2>&1 || true
  done
  psql_on "$old_port" -c "DROP DATABASE IF EXISTS $old_db WITH (FORCE)" || true
  psql_on "$new_port" -c "DROP DATABASE IF EXISTS $new_db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT
