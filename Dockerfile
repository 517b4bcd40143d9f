# Build
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
RUN cargo build --release --locked --bin tidewire

# Run: the binary plus PostgreSQL, so the image also works without DATABASE_URL.
FROM debian:bookworm-slim
# curl: for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/tidewire
COPY --from=build /src/target/release/tidewire /usr/local/bin/tidewire
ENV TIDEWIRE_LISTEN=0.0.0.0:4000 \
    TIDEWIRE_DATA_DIR=/var/lib/tidewire/pg \
    PATH=/usr/lib/postgresql/15/bin:$PATH
# The embedded cluster's data (without DATABASE_URL): keep it across
# containers with `-v tidewire-data:/var/lib/tidewire`.
VOLUME ["/var/lib/tidewire"]
EXPOSE 4000
# Healthy = ready: the database answers and the listener is live, not
# merely a port that accepts connections.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:4000/readyz"]
ENTRYPOINT ["tidewire"]
