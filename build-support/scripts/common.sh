# Shared helpers for the local-infrastructure scripts. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${OMS_STATE_DIR:-$ROOT/.local}"
mkdir -p "$STATE_DIR"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Answers whether something accepts TCP connections at HOST PORT.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Waits up to $3 seconds for HOST PORT to accept connections.
wait_for_port() {
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    (( SECONDS < deadline )) || return 1
    sleep 0.1
  done
}

# The first broker of KAFKA_BROKERS, split into KAFKA_HOST and KAFKA_PORT.
first_broker="${KAFKA_BROKERS:-127.0.0.1:9092}"
first_broker="${first_broker%%,*}"
KAFKA_HOST="${first_broker%:*}"
KAFKA_PORT="${first_broker##*:}"

# Host and port of DATABASE_URL (postgres://user:pass@host:port/db).
db_url="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/orders}"
db_hostport="${db_url#*://}"
db_hostport="${db_hostport#*@}"
db_hostport="${db_hostport%%/*}"
PG_HOST="${db_hostport%:*}"
PG_PORT="${db_hostport##*:}"
if [[ "$PG_PORT" == "$PG_HOST" ]]; then PG_PORT=5432; fi
