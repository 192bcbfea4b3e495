#!/usr/bin/env bash
# Starts (or stops) a local tansu broker, a Kafka-protocol broker, installing
# it from crates.io on first use.
#   broker.sh start   # no-op when a broker already answers at KAFKA_BROKERS
#   broker.sh stop    # stops a broker this script started
# TANSU_STORAGE picks the storage engine: memory://tansu/ (default, fast,
# forgets everything on restart) or sqlite://PATH (durable).
set -euo pipefail
source "$(dirname "$0")/common.sh"

TANSU_VERSION=0.6.0
PID_FILE="$STATE_DIR/tansu.pid"

install_tansu() {
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  log "installing tansu $TANSU_VERSION (once per machine; about 20 minutes on 2 cores)"
  # The default features have no storage engine at all.
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql,postgres
}

start() {
  if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    log "a broker already answers at $KAFKA_HOST:$KAFKA_PORT"
    return
  fi
  install_tansu
  local storage="${TANSU_STORAGE:-memory://tansu/}"
  log "starting tansu at $KAFKA_HOST:$KAFKA_PORT ($storage), log: $STATE_DIR/tansu.log"
  # Both URLs are needed: the default advertised listener is `localhost`.
  # tansu opens sqlite paths relative to its working directory.
  cd "$STATE_DIR"
  nohup tansu broker \
    --listener-url "tcp://$KAFKA_HOST:$KAFKA_PORT" \
    --advertised-listener-url "tcp://$KAFKA_HOST:$KAFKA_PORT" \
    --storage-engine "$storage" \
    >"$STATE_DIR/tansu.log" 2>&1 &
  echo $! >"$PID_FILE"
  wait_for_port "$KAFKA_HOST" "$KAFKA_PORT" 30 || die "tansu did not start; see $STATE_DIR/tansu.log"
}

stop() {
  if [[ -f "$PID_FILE" ]]; then
    kill "$(cat "$PID_FILE")" 2>/dev/null || true
    rm -f "$PID_FILE"
    log "stopped tansu"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  install) install_tansu ;;
  *) die "usage: broker.sh start|stop|install" ;;
esac
