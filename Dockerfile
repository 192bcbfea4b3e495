# Builds all four services into one small image; docker-compose.yml picks the
# binary per container.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins \
 && mkdir /out \
 && cp target/release/gateway target/release/order-service target/release/payment-service \
       target/release/notification-service target/release/oms-health-probe \
       target/release/oms-devkeys /out/

FROM debian:bookworm-slim
# /auth and /auth-public belong to oms: a named volume mounted there starts
# with that ownership, so docker-compose's auth-keys service can write.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 oms \
 && mkdir /auth /auth-public && chown oms /auth /auth-public
COPY --from=build /out/ /usr/local/bin/
USER oms
ENV LOG_FORMAT=json RUST_LOG=info
