#!/usr/bin/env bash
# Build ampere's runtime image FROM scratch out of a host-built binary, with no registry access:
# the same layout as the repository's Dockerfile (whose base images cannot be pulled here), for
# the container tests (server/tests/containers/image.rs) and for trying the deploy/ recipes
# offline.
#   scripts/build-ampere-image.sh [TAG] [BINARY]
#     TAG     default ampere-local:latest
#     BINARY  default $CARGO_TARGET_DIR/release/ampere if it exists, else .../debug/ampere
#             (CARGO_TARGET_DIR defaults to /var/tmp/ampere-target)
#   scripts/build-ampere-image.sh --deps-only
#     only installs what is missing (root): busybox-static, and Debian's docker-compose when
#     neither `docker compose` nor `docker-compose` works (the container tests drive
#     deploy/compose/shared-storage.yaml with it; without it they fall back to `docker run`).
#     scripts/test.sh runs this; the container test builds the image itself, from the binary
#     cargo built for it.
# Idempotent: skipped when TAG exists with the same binary and the same recipe (labels
# ampere-binary-sha256 and ampere-recipe-sha256: this script's own hash); FORCE=1 rebuilds.
# The image TAG named before is removed when the rebuild leaves it untagged (only that one).
# Needs a running Docker engine (scripts/docker-up.sh), busybox-static (installed when missing
# and root), strip (binutils; without it the binary goes in unstripped), ldd.
#
# The image, as the Dockerfile's runtime stage (image.rs compares the two):
#   /usr/local/bin/ampere (debug info stripped) + its shared-library closure (ldd), CA
#   certificates at /etc/ssl/certs/ca-certificates.crt, /etc/passwd + /etc/group with the
#   non-root user ampere (10001:10001), /etc/nsswitch.conf, /tmp (1777), /app/persistent and
#   /var/lib/electric/data owned by ampere; ENV ELECTRIC_PORT=3000 and Debian's PATH, WORKDIR
#   /app, USER 10001:10001, EXPOSE 3000, the same HEALTHCHECK timings on /v1/health,
#   ENTRYPOINT ["/usr/local/bin/ampere"], CMD ["serve"].
# The one difference: no curl. A static busybox provides /bin/sh (the HEALTHCHECK runs through
# the shell, as the Dockerfile's) and `wget`, which like `curl -f` succeeds on any 2xx, so 202
# (a waiting standby) counts as healthy.
set -euo pipefail
ms() { date +%s%3N; }
T0=$(ms)
say() { echo "build-ampere-image: [$(( $(ms) - T0 )) ms] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

apt_install() {
  [ "$(id -u)" = 0 ] || die "missing $*: apt-get install -y $*"
  say "installing $*"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } \
      >/tmp/build-ampere-image-apt.log 2>&1 \
    || { tail -n 20 /tmp/build-ampere-image-apt.log >&2; die "apt-get install $* failed"; }
}
have_compose() {
  timeout 20 docker compose version >/dev/null 2>&1 || timeout 20 docker-compose version >/dev/null 2>&1
}

if [ "${1:-}" = --deps-only ]; then
  [ -x /bin/busybox ] || apt_install busybox-static
  # compose is optional: without it the container test runs the recipe's settings with `docker run`
  if ! have_compose && [ "$(id -u)" = 0 ]; then
    ( apt_install docker-compose ) || say "WARNING: docker-compose did not install"
  fi
  if have_compose; then say "busybox and docker compose present"
  else say "busybox present; no docker compose (the container test falls back to docker run)"; fi
  exit 0
fi

TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/ampere-target}
TAG=${1:-ampere-local:latest}
BINARY=${2:-}
if [ -z "$BINARY" ]; then
  if [ -x "$TARGET_DIR/release/ampere" ]; then BINARY=$TARGET_DIR/release/ampere; else BINARY=$TARGET_DIR/debug/ampere; fi
fi
[ -x "$BINARY" ] || die "no ampere binary at $BINARY (cargo build --release -p ampere-server --bin ampere)"
APP_UID=10001
APP_GID=10001

[ -x /bin/busybox ] || apt_install busybox-static
CA=/etc/ssl/certs/ca-certificates.crt
[ -s "$CA" ] || die "no CA bundle at $CA (apt-get install -y ca-certificates)"
timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers (run scripts/docker-up.sh first)"

# Copy the binary first: it may be rebuilt (cargo) while we work; hash and ship the same bytes.
ctx=$(mktemp -d /tmp/ampereimg.XXXXXX); trap 'rm -rf "$ctx"' EXIT
chmod 755 "$ctx"
cp "$BINARY" "$ctx/ampere.orig"
BIN_SHA=$(sha256sum "$ctx/ampere.orig" | cut -d' ' -f1)
RECIPE_SHA=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
labels() { docker image inspect "$TAG" --format \
  '{{index .Config.Labels "ampere-binary-sha256"}} {{index .Config.Labels "ampere-recipe-sha256"}}' 2>/dev/null; }
if [ "${FORCE:-0}" != 1 ] && [ "$(labels)" = "$BIN_SHA $RECIPE_SHA" ]; then
  say "image $TAG is up to date (binary sha256 ${BIN_SHA:0:12})"; exit 0
fi

cd "$ctx"
R=rootfs
mkdir -p $R/usr/local/bin $R/bin $R/etc/ssl/certs $R/tmp $R/var/lib appfs/app/persistent appfs/electric/data
if command -v strip >/dev/null; then
  strip --strip-debug -o $R/usr/local/bin/ampere ampere.orig
else
  say "strip (binutils) not found: the binary goes in with its debug info"
  cp ampere.orig $R/usr/local/bin/ampere
fi
chmod 755 $R/usr/local/bin/ampere
# shared-library closure (glibc's NSS for files/dns is built into libc since 2.34)
ldd ampere.orig | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u | grep '^/' |
  while read -r l; do mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; done
cp /bin/busybox $R/bin/
for applet in sh wget; do ln -s busybox "$R/bin/$applet"; done
cp "$CA" $R/etc/ssl/certs/ca-certificates.crt
printf 'root:x:0:0:root:/root:/bin/sh\nampere:x:%s:%s::/app:/usr/sbin/nologin\n' $APP_UID $APP_GID > $R/etc/passwd
printf 'root:x:0:\nampere:x:%s:\n' $APP_GID > $R/etc/group
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > $R/etc/nsswitch.conf
chmod 1777 $R/tmp
VERSION=$("$ctx/ampere.orig" --version 2>/dev/null || echo "ampere (unknown version)")

cat > Dockerfile <<DOCKERFILE
FROM scratch
LABEL ampere-binary-sha256="$BIN_SHA" ampere-recipe-sha256="$RECIPE_SHA" ampere-version="$VERSION"
COPY rootfs/ /
COPY --chown=$APP_UID:$APP_GID appfs/app /app
COPY --chown=$APP_UID:$APP_GID appfs/electric /var/lib/electric
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ELECTRIC_PORT=3000
WORKDIR /app
USER $APP_UID:$APP_GID
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \\
  CMD wget -q -O /dev/null "http://127.0.0.1:\${ELECTRIC_PORT:-3000}/v1/health" || exit 1
ENTRYPOINT ["/usr/local/bin/ampere"]
CMD ["serve"]
DOCKERFILE
rm ampere.orig
say "building $TAG from $BINARY ($VERSION, sha256 ${BIN_SHA:0:12})"
old_id=$(docker image inspect "$TAG" --format '{{.Id}}' 2>/dev/null || true)
# the legacy builder (no buildx on Debian's docker.io) prints a deprecation notice: harmless
docker build -q -t "$TAG" . >"$ctx/build.log" 2>&1 || { cat "$ctx/build.log" >&2; die "docker build failed"; }
# the image this tag named before, now untagged: ours, remove it (fails harmlessly while in use)
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect "$TAG" --format '{{.Id}}')" ] &&
   [ -z "$(docker image inspect "$old_id" --format '{{join .RepoTags ","}}' 2>/dev/null)" ]; then
  docker rmi "$old_id" >/dev/null 2>&1 || true
fi
say "$(docker image inspect "$TAG" --format "built $TAG {{.Id}} {{.Size}} bytes")"
