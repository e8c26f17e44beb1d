# tsmigrate: build with the Rust toolchain, run on a slim Debian.
# The builder uses the bookworm variant of rust:1 so the binary links against the same glibc
# as the runtime image.
FROM rust:1-bookworm AS builder
WORKDIR /src
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
ENTRYPOINT ["tsmigrate"]
CMD ["run"]
