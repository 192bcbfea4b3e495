#!/usr/bin/env bash
# Runs the whole system in this terminal: with Docker when an engine answers
# (docker compose), otherwise with a local tansu broker, PostgreSQL and the
# four services built from this checkout. Logs are prefixed by service.
# Ctrl-C stops everything this script started.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

if [[ "${OMS_USE_DOCKER:-auto}" != "0" ]] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  log "Docker engine found: docker compose up"
  exec docker compose up --build
fi

started_broker=0
started_postgres=0
port_open "$KAFKA_HOST" "$KAFKA_PORT" || started_broker=1
port_open "$PG_HOST" "$PG_PORT" || started_postgres=1
# A durable log by default: the services keep their offsets in PostgreSQL,
# which outlives this run, so the broker's log should too.
TANSU_STORAGE="${TANSU_STORAGE:-sqlite://tansu.db}" "$ROOT/build-support/scripts/broker.sh" start
"$ROOT/build-support/scripts/postgres.sh" start

profile="${PROFILE:-debug}"
log "building the services ($profile)"
if [[ "$profile" == release ]]; then cargo build --release --bins; else cargo build --bins; fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  log "stopping services"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  (( started_broker )) && "$ROOT/build-support/scripts/broker.sh" stop
  (( started_postgres )) && "$ROOT/build-support/scripts/postgres.sh" stop
  exit 0
}
trap cleanup INT TERM EXIT

# The order service first: the gateway reads through it.
for service in order-service payment-service notification-service gateway; do
  label="$(printf '%-21s' "[$service]")"
  "$ROOT/target/$profile/$service" > >(sed -u "s/^/$label /") 2>&1 &
  pids+=($!)
done
log "gateway on ${GATEWAY_GRPC_ADDR:-0.0.0.0:50051}; try: grpcurl -plaintext 127.0.0.1:50051 list"
wait -n "${pids[@]}" || true
log "a service exited; stopping the rest"
