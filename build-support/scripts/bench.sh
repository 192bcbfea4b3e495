#!/usr/bin/env bash
# The benchmark: builds the release binaries, starts a broker and PostgreSQL
# if none answer, runs the four services on their own ports against a fresh
# database and topic prefix, drives them with oms-loadgen, and stops them.
#   bench.sh            # the full benchmark (see `oms-loadgen bench --help`)
#   bench.sh ceilings   # the machine's ceilings only
#   bench.sh smoke      # a few seconds of everything, to see that it works
#   bench.sh run ...    # one phase, e.g. `run --rate 1000 --duration 30`
#   bench.sh full --replicas 2   # two instances of each downstream service
# Extra arguments go to oms-loadgen. The report: target/bench/latest.json.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

mode=full
if [[ $# -gt 0 && "$1" != -* ]]; then
  mode="$1"
  shift
fi
# --replicas N is ours; everything else goes to oms-loadgen.
replicas=1
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --replicas) replicas="${2:?--replicas needs a number}"; shift 2 ;;
    --replicas=*) replicas="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ "$replicas" =~ ^[1-9]$ ]] || die "--replicas must be 1 to 9, not '$replicas'"
set -- "${args[@]+"${args[@]}"}"

log "building release binaries"
cargo build --release --workspace --bins
"$ROOT/build-support/scripts/postgres.sh" start
# A broker of the benchmark's own, fresh for every run: tansu's memory
# engine keeps every record it was ever sent and slows down as it grows, so
# a long-lived broker would make runs incomparable.
export KAFKA_BROKERS="${BENCH_KAFKA_BROKERS:-127.0.0.1:19092}"
export OMS_STATE_DIR="$ROOT/target/bench/broker"
"$ROOT/build-support/scripts/broker.sh" stop
"$ROOT/build-support/scripts/broker.sh" start

if ip route show table local 2>/dev/null | grep -q "127.0.0.1.*quickack 1"; then
  log "loopback quickack is on (an optional tuning; see README)"
else
  log "loopback quickack is off (the default; see README, 'rskafka and Nagle')"
fi

run_id="$(date +%s)"
admin_url="${DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/postgres}"
export DATABASE_URL="${admin_url%/*}/bench_$run_id"
export KAFKA_TOPIC_PREFIX="bench-$run_id-"
# The services run with their defaults (6 partitions per topic, the
# default fetch pacing), as `just run` and docker-compose run them; set
# KAFKA_TOPIC_PARTITIONS or KAFKA_FETCH_MAX_IDLE_PAUSE_MS in the environment
# to measure other settings.
export RUST_LOG="${RUST_LOG:-warn}"
# The services check tokens, as they do by default, and each of the load's
# customers sends its own. BENCH_AUTH_MODE=disabled measures without.
export AUTH_MODE="${BENCH_AUTH_MODE:-jwt}"
token_args=()
if [[ "$AUTH_MODE" == jwt ]]; then
  AUTH_JWKS_FILE="$("$ROOT/target/release/oms-devkeys" init "$ROOT/target/bench/auth")"
  export AUTH_JWKS_FILE AUTH_ISSUER=oms-dev AUTH_AUDIENCE=oms
  token_args=(--token-key-dir "$ROOT/target/bench/auth")
else
  # Without tokens every call comes from one address, which the per-caller
  # limits would then treat as one caller.
  export RATE_LIMIT_WRITES_PER_SECOND=0 RATE_LIMIT_READS_PER_SECOND=0
fi
log "AUTH_MODE=$AUTH_MODE"
# Below Linux's ephemeral range (32768-60999), where an outgoing
# connection can hold a port just when a service wants to listen on it.
# Instance i of a service listens on its port + 10 * i.
export GATEWAY_GRPC_ADDR=127.0.0.1:21051
order_urls=()
for ((i = 0; i < replicas; i++)); do order_urls+=("http://127.0.0.1:$((21052 + 10 * i))"); done
ORDER_SERVICE_URL="$(IFS=,; echo "${order_urls[*]}")"
export ORDER_SERVICE_URL
logs="$ROOT/target/bench/logs-$run_id"
mkdir -p "$logs"

pids=()
sink_pid=
cleanup() {
  trap - INT TERM EXIT
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  if [[ -n "$sink_pid" ]]; then
    kill -TERM "$sink_pid" 2>/dev/null || true
    wait "$sink_pid" 2>/dev/null || true
    log "OTLP sink: $(grep 'spans received' "$logs/otlp-sink.log" || echo 'no count')"
  fi
  "$ROOT/build-support/scripts/broker.sh" stop
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS bench_$run_id WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup INT TERM EXIT

# BENCH_TRACES=on exports every service's spans to a sink that counts and
# drops them (`oms-otlp-sink`), to measure what tracing costs.
if [[ "${BENCH_TRACES:-off}" == on ]]; then
  "$ROOT/target/release/oms-otlp-sink" 127.0.0.1:21317 >"$logs/otlp-sink.log" 2>&1 &
  sink_pid=$!
  export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:21317
fi
log "BENCH_TRACES=${BENCH_TRACES:-off}"

addrs=()
start() { # binary, instance number, listen variable, base port
  local addr="127.0.0.1:$(($4 + 10 * $2))"
  # Metrics 1000 ports above the service's own, clear of `just run`'s.
  env "$3=$addr" METRICS_ADDR="127.0.0.1:$(($4 + 1000 + 10 * $2))" INSTANCE_ID="$1-$2" \
    "$ROOT/target/release/$1" >"$logs/$1-$2.log" 2>&1 &
  pids+=($!)
  addrs+=("$addr")
}
for ((i = 0; i < replicas; i++)); do
  start order-service "$i" ORDER_GRPC_ADDR 21052
  start payment-service "$i" PAYMENT_GRPC_ADDR 21053
  start notification-service "$i" NOTIFICATION_GRPC_ADDR 21054
done
start gateway 0 GATEWAY_GRPC_ADDR 21051
for addr in "${addrs[@]}"; do
  for _ in $(seq 1 600); do
    "$ROOT/target/release/oms-health-probe" "$addr" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$ROOT/target/release/oms-health-probe" "$addr" >/dev/null || die "service at $addr did not serve; logs in $logs"
done
log "services serving, $replicas instance(s) of each downstream one (logs in $logs)"
# BENCH_WITHOUT_ORDER_NOTIFY=1 measures what WatchOrder's trigger costs:
# PostgreSQL serialises the commits of transactions that send NOTIFY.
if [[ "${BENCH_WITHOUT_ORDER_NOTIFY:-0}" == 1 ]]; then
  psql "$DATABASE_URL" -qc "ALTER TABLE order_service.orders DISABLE TRIGGER orders_notify_change" \
    || die "cannot disable the orders trigger"
  log "the orders NOTIFY trigger is disabled for this run (WatchOrder will not see changes)"
fi

target=(--gateway "http://$GATEWAY_GRPC_ADDR" --database-url "$DATABASE_URL" --brokers "$KAFKA_BROKERS"
        "${token_args[@]+"${token_args[@]}"}")
loadgen="$ROOT/target/release/oms-loadgen"
case "$mode" in
  full) "$loadgen" bench "${target[@]}" "$@" ;;
  ceilings) "$loadgen" ceilings "${target[@]}" "$@" ;;
  run) "$loadgen" run "${target[@]}" "$@" ;;
  smoke) "$loadgen" bench "${target[@]}" --rate 200 --duration 2 --concurrency 16 \
           --step-duration 1 --ceiling-duration 1 "$@" ;;
  *) die "usage: bench.sh [full|ceilings|smoke|run] [oms-loadgen options]" ;;
esac
