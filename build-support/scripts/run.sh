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

# Authentication on, as in production: tokens are checked against a
# development key pair made on first use in .dev/auth; `just token alice`
# prints one. AUTH_MODE=disabled just run turns it off (and every service
# warns about it).
export AUTH_MODE="${AUTH_MODE:-jwt}"
if [[ "$AUTH_MODE" == jwt && -z "${AUTH_JWKS_FILE:-}" ]]; then
  AUTH_JWKS_FILE="$("$ROOT/target/$profile/oms-devkeys" init "$ROOT/.dev/auth")"
  export AUTH_JWKS_FILE AUTH_ISSUER=oms-dev AUTH_AUDIENCE=oms
fi

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

# REPLICAS instances of each downstream service, instance i on its
# service's port + 10 * i (order 50052, 50062, ...), and two gateways
# (50051 and 50061), each given every order-service instance.
replicas="${REPLICAS:-1}"
[[ "$replicas" =~ ^[1-9][0-9]?$ ]] || die "REPLICAS must be a number from 1 to 99, not '$replicas'"
order_urls=()
for ((i = 0; i < replicas; i++)); do order_urls+=("http://127.0.0.1:$((50052 + 10 * i))"); done
export ORDER_SERVICE_URL
ORDER_SERVICE_URL="$(IFS=,; echo "${order_urls[*]}")"

metrics_endpoints=()
start() { # binary, instance number, listen variable, base port, base metrics port
  local service="$1" i="$2" variable="$3" port=$(($4 + 10 * $2)) metrics_port=$(($5 + 10 * $2))
  local label
  label="$(printf '%-24s' "[$service#$((i + 1))]")"
  metrics_endpoints+=("$service#$((i + 1)): http://127.0.0.1:$metrics_port/metrics")
  env "$variable=0.0.0.0:$port" METRICS_ADDR="0.0.0.0:$metrics_port" INSTANCE_ID="$service-$((i + 1))-$$" \
    "$ROOT/target/$profile/$service" > >(sed -u "s/^/$label /") 2>&1 &
  pids+=($!)
}
# The order service first: the gateways read through it.
for ((i = 0; i < replicas; i++)); do
  start order-service "$i" ORDER_GRPC_ADDR 50052 9102
  start payment-service "$i" PAYMENT_GRPC_ADDR 50053 9103
  start notification-service "$i" NOTIFICATION_GRPC_ADDR 50054 9104
done
for i in 0 1; do start gateway "$i" GATEWAY_GRPC_ADDR 50051 9101; done
log "$replicas instance(s) of each service; gateways on 50051 and 50061; try: grpcurl -plaintext 127.0.0.1:50051 list"
log "Prometheus metrics:"
for endpoint in "${metrics_endpoints[@]}"; do log "  $endpoint"; done
wait -n "${pids[@]}" || true
log "a service exited; stopping the rest"
