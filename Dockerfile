# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from distroless (glibc and libgcc
# only: no shell, no package manager) as a non-root user.
#   docker build -t sluice .
#   docker run --rm -v "$PWD/my-sluice.toml:/etc/sluice/sluice.toml:ro" \
#     -e SLUICE_ACME_JWT_SECRET -p 8080:8080 --stop-timeout 45 \
#     --ulimit nofile=65536:65536 sluice
# See deploy/README.md.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Build dependencies first so source edits do not rebuild them. Cargo.toml names the
# admission bench, so benches/ must be there for the manifest to load.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin sluice && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sluice \
    && strip target/release/sluice

# Debian 12 (glibc 2.36), as the builder. Upstream wss:// is verified against the
# webpki roots compiled into the binary; add a private CA with upstream.ca_file.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="A multi-tenant, capacity-aware WebSocket signaling proxy" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
# The examples, for `docker run --rm sluice check-config /usr/share/sluice/examples/sluice.toml`.
# Never loaded by default: they hold demo credentials. Mount your config at
# /etc/sluice/sluice.toml. It decides the addresses (listen.address defaults to
# 0.0.0.0:8080; admin.address to 127.0.0.1:9090, which the HEALTHCHECK uses): no
# SLUICE__… variable is baked in, since it would silently win over the mounted file.
COPY config/ /usr/share/sluice/examples/
# distroless "nonroot" (numeric, so Kubernetes' runAsNonRoot can verify it).
USER 65532:65532
# 8080: the proxy (listen.address); 9090: admin (metrics, health, status page).
EXPOSE 8080 9090
# SIGTERM drains: live sessions get shutdown.drain_timeout (30 s) to end. Docker's
# default stop timeout is 10 s: run with --stop-timeout 45 (or `docker stop -t 45`).
STOPSIGNAL SIGTERM
# No shell or curl in the image: sluice itself GETs http://127.0.0.1:9090/healthz and
# exits 0 on 200. With another admin port, override it in exec form (`docker run
# --health-cmd` needs a shell): in compose, healthcheck.test: ["CMD",
# "/usr/local/bin/sluice", "health", "--admin", "127.0.0.1:PORT"].
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/sluice", "health"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sluice.toml"]
