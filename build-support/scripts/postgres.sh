#!/usr/bin/env bash
# Makes sure PostgreSQL answers at DATABASE_URL's host and port. When nothing
# answers, it creates and starts a throwaway cluster under .local/ from the
# system's PostgreSQL binaries (trust auth, user postgres).
#   postgres.sh start | stop
set -euo pipefail
source "$(dirname "$0")/common.sh"

DATA_DIR="$STATE_DIR/postgres"

find_bin_dir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) /usr/local/pgsql/bin; do
    [[ -x "$dir/pg_ctl" ]] && { echo "$dir"; return; }
  done
  command -v pg_ctl >/dev/null && dirname "$(command -v pg_ctl)"
}

# initdb refuses to run as root, so the cluster belongs to `postgres` then.
as_owner() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  if port_open "$PG_HOST" "$PG_PORT"; then
    log "PostgreSQL already answers at $PG_HOST:$PG_PORT"
    return
  fi
  local bin
  bin="$(find_bin_dir)" || true
  [[ -n "$bin" ]] || die "no PostgreSQL at $PG_HOST:$PG_PORT and no PostgreSQL binaries to start one; install postgresql-15 or use Docker"
  if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
    log "creating a local PostgreSQL cluster in $DATA_DIR"
    mkdir -p "$DATA_DIR"
    [[ $EUID -eq 0 ]] && chown postgres "$DATA_DIR" "$STATE_DIR"
    as_owner "$bin/initdb" -D "$DATA_DIR" -U postgres --auth=trust >/dev/null
  fi
  log "starting PostgreSQL at $PG_HOST:$PG_PORT, log: $DATA_DIR/server.log"
  as_owner "$bin/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w \
    -o "-c listen_addresses=$PG_HOST -p $PG_PORT -k $DATA_DIR" start >/dev/null
}

stop() {
  local bin
  bin="$(find_bin_dir)" || true
  if [[ -f "$DATA_DIR/postmaster.pid" && -n "$bin" ]]; then
    as_owner "$bin/pg_ctl" -D "$DATA_DIR" -m fast stop >/dev/null
    log "stopped the local PostgreSQL cluster"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: postgres.sh start|stop" ;;
esac
