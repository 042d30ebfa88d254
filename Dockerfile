# idemq: one image for every role (`idemq migrate`, `idemq api`, `idemq worker`).
# Build: docker build -t idemq .   (docker-compose.yml builds it for you)

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# apalis-postgres' query macros must not look for a live database at build time.
ENV SQLX_OFFLINE=true \
    CARGO_INCREMENTAL=0 \
    CARGO_TARGET_DIR=/build/target
# The whole workspace (every member's manifest is needed); a host target/
# directory that slips into the context is ignored thanks to CARGO_TARGET_DIR.
COPY . .
# Only the service: the bench (`idemq-bench`) stays out of the image.
RUN cargo build --release --locked --bin idemq \
 && install -m 0755 /build/target/release/idemq /usr/local/bin/idemq

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin idemq \
 && mkdir -p /app \
 && chown idemq:idemq /app
COPY --from=builder /usr/local/bin/idemq /usr/local/bin/idemq
# Plain SQL migrations, for tooling that reads them from disk.
COPY --from=builder /src/migrations /app/migrations
WORKDIR /app
USER idemq:idemq
ENV IDEMQ_LOG_FORMAT=json
EXPOSE 3000 3001
ENTRYPOINT ["/usr/local/bin/idemq"]
CMD ["api"]
