#!/usr/bin/env bash
# A private PostgreSQL primary with a hot standby streaming from it (pg_basebackup -R, a
# replication slot), on free ports of 127.0.0.1, for measuring reads on a read replica
# (`TSMIGRATE_BENCH_REPLICA=1 ./scripts/bench.sh reads`) or trying `database.read_url`:
#   eval "$(scripts/pg-replica.sh start DIR)"   # prints the two URLs as exports
#   scripts/pg-replica.sh stop DIR              # stops both and removes DIR
# Exports TSMIGRATE_TEST_DATABASE_URL (the primary's maintenance database, where benchmarks
# create theirs) and TSMIGRATE_BENCH_READ_URL (the standby, same database names). TimescaleDB is
# preloaded when installed. Runs the servers as the postgres OS user when started as root.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?a directory for both clusters}
bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
case "$cmd" in
start)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  primary=$(free_port)
  standby=$(free_port)
  as_pg "$bin/initdb" -D "$dir/primary" -U postgres --auth=trust -E UTF8 --locale=C --no-sync --no-instructions >/dev/null
  preload=""
  if [ -e "$("$bin/pg_config" --sharedir)/extension/timescaledb.control" ]; then preload="shared_preload_libraries = 'timescaledb'"; fi
  cat >>"$dir/primary/postgresql.conf" <<CONF
port = $primary
listen_addresses = 'localhost'
unix_socket_directories = '$dir'
shared_buffers = 256MB
max_connections = 100
$preload
CONF
  as_pg "$bin/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w -t 60 start >/dev/null
  as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir/standby" -R -X stream -C -S bench_standby -c fast --no-sync
  cat >>"$dir/standby/postgresql.conf" <<CONF
port = $standby
unix_socket_directories = '$dir'
hot_standby = on
CONF
  as_pg "$bin/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w -t 60 start >/dev/null
  echo "export TSMIGRATE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$primary/postgres"
  echo "export TSMIGRATE_BENCH_READ_URL=postgres://postgres@127.0.0.1:$standby/postgres"
  ;;
stop)
  for cluster in standby primary; do
    [ -d "$dir/$cluster" ] && as_pg "$bin/pg_ctl" -D "$dir/$cluster" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
  ;;
*) echo "pg-replica.sh: start DIR | stop DIR" >&2; exit 2 ;;
esac
