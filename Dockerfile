# Build
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
RUN cargo build --release --locked --bin tidewire

# Run: the binary plus PostgreSQL, so the image also works without DATABASE_URL.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tidewire /usr/local/bin/tidewire
ENV TIDEWIRE_LISTEN=0.0.0.0:4000 \
    TIDEWIRE_DATA_DIR=/var/lib/tidewire/pg \
    PATH=/usr/lib/postgresql/15/bin:$PATH
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=3s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/4000"]
ENTRYPOINT ["tidewire"]
