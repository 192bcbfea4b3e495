# Recipes for working on the order system. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

scripts := "build-support/scripts"

# Lists the recipes.
default:
    @just --list

# Instances of each downstream service `just run` starts:
# `just REPLICAS=3 run` (or REPLICAS=3 in the environment).
REPLICAS := env_var_or_default("REPLICAS", "1")

# Runs the whole system: Docker when available, else a local broker,
# PostgreSQL, REPLICAS instances of each downstream service and two
# gateways. Ctrl-C stops everything.
run:
    REPLICAS={{REPLICAS}} {{scripts}}/run.sh

# Prints a development token for CUSTOMER, signed with the key `just run`
# trusts (made in .dev/auth on first use): `just token alice`, or
# `just token ops "orders:read orders:admin"`. Use it with grpcurl:
# -H "authorization: Bearer $(just token alice)".
token customer scopes="orders:read orders:write":
    @cargo run -q -p oms-devkeys -- token .dev/auth {{quote(customer)}} {{quote(scopes)}}

# Makes a development CA and certificates in .dev/certs (once): ca.pem,
# server.pem/server-key.pem for every service, client.pem/client-key.pem for
# the gateway. README, "Security", shows how to turn TLS on with them.
certs:
    @cargo run -q -p oms-devkeys -- certs .dev/certs

# Runs the whole test suite against a real broker and PostgreSQL, starting
# them if needed. Extra arguments go to `cargo test`.
test *args: infra
    cargo build --workspace --bins
    cargo test --workspace {{args}}

# Only the fault tests: SIGKILLed services, broker and database outages.
# (`just test` runs them too.)
test-faults: infra
    cargo build --workspace --bins
    cargo test -p oms-e2e --test faults --test replica_faults --test replicas -- --nocapture

# The benchmark against release builds: `just bench` (everything),
# `just bench ceilings` (the machine's ceilings only) or `just bench smoke`
# (a few seconds). Extra arguments go to oms-loadgen. Writes
# target/bench/latest.json; see BENCHMARKS.md.
bench mode="full" *args:
    {{scripts}}/bench.sh {{mode}} {{args}}

# Starts what the tests and services need: a tansu broker and PostgreSQL.
infra: broker postgres

# Starts a local tansu broker (installing it on first use).
broker:
    {{scripts}}/broker.sh start

# Stops the broker started by `just broker`.
broker-stop:
    {{scripts}}/broker.sh stop

# Makes sure PostgreSQL answers, starting a local cluster if none does.
postgres:
    {{scripts}}/postgres.sh start

# Stops the local cluster started by `just postgres`.
postgres-stop:
    {{scripts}}/postgres.sh stop

# Optional tuning (root only): quick ACKs on the loopback route; see the
# README, "rskafka and Nagle".
quickack:
    {{scripts}}/quickack.sh

# Formatting, clippy with warnings denied, and protobuf lint.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cd proto && npx --yes @bufbuild/buf@1.75.0 lint

# Lint, then the tests.
verify: lint test
