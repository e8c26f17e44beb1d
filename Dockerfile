# tsmigrate: build with the Rust toolchain, run on a slim Debian.
# The builder uses the bookworm variant of rust:1 so the binary links against the same glibc
# as the runtime image.
FROM rust:1-bookworm AS builder
WORKDIR /src
# Dependencies first, in a layer of their own: built against stub sources from the manifest
# and lock file alone, so a change to the code reuses this layer and compiles only tsmigrate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && for bench in backfill ingest validate reads; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked --bin tsmigrate \
    && rm -rf src tests benches target/release/tsmigrate* target/release/deps/tsmigrate-* target/release/deps/libtsmigrate-* \
              target/release/.fingerprint/tsmigrate-*
COPY . .
RUN cargo build --release --locked --bin tsmigrate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --home-dir /nonexistent tsmigrate
COPY --from=builder /src/target/release/tsmigrate /usr/local/bin/tsmigrate
COPY tsmigrate.example.toml /usr/share/doc/tsmigrate/tsmigrate.example.toml
USER tsmigrate
WORKDIR /tmp
# Listen on all interfaces inside the container (the default is 127.0.0.1:8080).
ENV TSMIGRATE_BIND=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=12 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["tsmigrate"]
CMD ["run"]
