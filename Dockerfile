# ampere's container image, laid out like Electric's (electricsql/electric), so Electric's
# Docker, Compose, Kubernetes and ECS manifests work with only the image name changed
# (recipes: deploy/, notes: docs/deploy.md).
#
#   docker build -t ampere .
#   docker run -p 3000:3000 -e DATABASE_URL=postgresql://user:pw@host:5432/db \
#              -e ELECTRIC_SECRET=... ampere
#
# Runtime layout: /usr/local/bin/ampere as ENTRYPOINT (CMD `serve`; `docker run IMAGE cleanup
# --yes` runs the other subcommand); WORKDIR /app, so the default ELECTRIC_STORAGE_DIR
# (./persistent) is /app/persistent, where Electric's image keeps it; /var/lib/electric/data
# (the path Electric's guides mount volumes on) exists too, both owned by the non-root user
# ampere (10001:10001, numeric so Kubernetes' runAsNonRoot can check it), so an empty named
# volume mounted on either starts out writable; EXPOSE 3000; a HEALTHCHECK on /v1/health that
# accepts 202 (`starting`, or `waiting`: a read-only standby during a rolling upgrade) as well
# as 200 (`active`): `curl -f` fails only on >= 400.
#
# No PostgreSQL inside: DATABASE_URL is required. Without it ampere exits at once ("DATABASE_URL
# is unset and the embedded PostgreSQL could not start: no PostgreSQL server binaries found").
#
# Kept in step with the registry-free image the container tests build (scripts/
# build-ampere-image.sh: FROM scratch, busybox wget instead of curl for the HEALTHCHECK) by
# server/tests/containers/image.rs, which parses this file's last stage and compares it with
# that image's configuration: change both together.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# The image has gcc and make; bindgen needs libclang for Postgres's own parser (the pg_query
# crate compiles libpg_query's C code). SQLite is bundled (rusqlite's "bundled") and TLS is
# rustls on ring: no other system libraries.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --strip-debug keeps the symbol table (function names in backtraces), drops the line tables
# that [profile.release] debug = 1 adds (about 100 MB).
RUN cargo build --release --locked -p ampere-server --bin ampere \
 && strip --strip-debug target/release/ampere \
 && install -m 0755 target/release/ampere /usr/local/bin/ampere \
 && /usr/local/bin/ampere --version

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ampere \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin ampere \
 && mkdir -p /app/persistent /var/lib/electric/data \
 && chown -R 10001:10001 /app /var/lib/electric
COPY --from=builder /usr/local/bin/ampere /usr/local/bin/ampere
ENV ELECTRIC_PORT=3000
WORKDIR /app
USER 10001:10001
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${ELECTRIC_PORT:-3000}/v1/health" || exit 1
ENTRYPOINT ["/usr/local/bin/ampere"]
CMD ["serve"]
