# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a slim Debian with a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Build dependencies first so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/sluice

FROM debian:bookworm-slim
# Upstream wss:// is verified against the webpki roots compiled into the binary, so no
# ca-certificates package is needed; add one with upstream.ca_file for a private CA.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
# No config is baked in: the examples in config/ carry demo credentials. Mount yours:
#   docker run -v /path/to/sluice.toml:/etc/sluice/sluice.toml:ro -p 8080:8080 sluice
# Inside a container the proxy must listen on all interfaces.
ENV SLUICE__LISTEN__ADDRESS=0.0.0.0:8080
USER 10001:10001
# 8080: the proxy (listen.address); 9090: admin (admin.address; loopback by default,
# set SLUICE__ADMIN__ADDRESS=0.0.0.0:9090 to scrape it from outside the container).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sluice.toml"]
