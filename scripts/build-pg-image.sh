#!/usr/bin/env bash
# Build a PostgreSQL image FROM scratch out of the host's Debian postgresql-NN files, with no
# registry access (docs: testing.md §3). Used by the container integration tests
# (server/tests/containers) as the fallback when AMPERE_TEST_PG_IMAGE (default postgres:15)
# is neither present locally nor pullable.
#   scripts/build-pg-image.sh [TAG]          default TAG: ampere-pg-local:<PG_MAJOR> (ampere-pg-local:15)
# Idempotent: skipped when an image with TAG built from the same server version exists
# (label pg-version); FORCE=1 rebuilds. Needs root (or the postgres user's uid readable),
# Debian packages postgresql-NN and busybox-static (installed when missing and root), and a
# running Docker engine (scripts/docker-up.sh).
# The image: `docker run IMAGE -c key=value ...` appends args to `postgres`; defaults are
# wal_level=logical, max_replication_slots=20, max_wal_senders=20, trust auth from anywhere
# (host all + host replication); logs on stderr ("database system is ready to accept connections").
set -euo pipefail
ms() { date +%s%3N; }
T0=$(ms)
say() { echo "build-pg-image: [$(( $(ms) - T0 )) ms] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

PG_MAJOR=${PG_MAJOR:-$( (ls /usr/lib/postgresql 2>/dev/null || true) | sort -V | tail -n1)}
PG_MAJOR=${PG_MAJOR:-15}
TAG=${1:-ampere-pg-local:$PG_MAJOR}

need_pkgs=()
[ -x "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ] || need_pkgs+=("postgresql-$PG_MAJOR")
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need_pkgs[*]}: apt-get install -y ${need_pkgs[*]}"
  say "installing ${need_pkgs[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; } \
      >/tmp/build-pg-image-apt.log 2>&1 \
    || { tail -n 20 /tmp/build-pg-image-apt.log >&2; die "apt-get install ${need_pkgs[*]} failed"; }
fi
[ -x "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ] || die "postgresql-$PG_MAJOR is not installed"
[ -x /bin/busybox ] || die "busybox is missing: apt-get install -y busybox-static"
timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers (run scripts/docker-up.sh first)"
id -u postgres >/dev/null 2>&1 || die "no 'postgres' OS user (it comes with the postgresql-common package)"

PGUID=$(id -u postgres); PGGID=$(id -g postgres)
PGVER=$("/usr/lib/postgresql/$PG_MAJOR/bin/postgres" --version)
# idempotent: skip when an image built from the same server version exists
if [ "${FORCE:-0}" != 1 ] &&
   [ "$(docker image inspect "$TAG" --format '{{index .Config.Labels "pg-version"}}' 2>/dev/null)" = "$PGVER" ]; then
  say "image $TAG is up to date ($PGVER)"; exit 0
fi

ctx=$(mktemp -d /tmp/pgimg.XXXXXX); trap 'rm -rf "$ctx"' EXIT
chmod 755 "$ctx"   # the postgres user must reach it for BAKE_DATA's initdb
cd "$ctx"
R=rootfs
mkdir -p $R/usr/lib/postgresql $R/usr/share/postgresql $R/etc $R/tmp $R/bin \
         varfs/var/lib/postgresql varfs/var/run/postgresql
cp -a "/usr/lib/postgresql/$PG_MAJOR" $R/usr/lib/postgresql/
# JIT off: no libLLVM in the image (PostgreSQL then silently runs without JIT)
rm -rf "$R/usr/lib/postgresql/$PG_MAJOR/lib/bitcode" "$R/usr/lib/postgresql/$PG_MAJOR"/lib/llvmjit*
cp -a "/usr/share/postgresql/$PG_MAJOR" $R/usr/share/postgresql/
cp -a /usr/share/zoneinfo $R/usr/share/
cp /bin/busybox $R/bin/ && ln -s busybox $R/bin/sh
# shared-library closure of every binary and module
for f in "$R/usr/lib/postgresql/$PG_MAJOR"/bin/* "$R/usr/lib/postgresql/$PG_MAJOR"/lib/*.so; do
  ldd "/${f#"$R"/}" 2>/dev/null | awk '/=>/ {print $3} /ld-linux/ {print $1}'
done | sort -u | grep '^/' | while read -r l; do
  mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"
done
printf 'root:x:0:0::/root:/bin/sh\npostgres:x:%s:%s::/var/lib/postgresql:/bin/sh\n' "$PGUID" "$PGGID" > $R/etc/passwd
printf 'root:x:0:\npostgres:x:%s:\n' "$PGGID" > $R/etc/group
chmod 1777 $R/tmp
cat > $R/entry.sh <<ENTRY
#!/bin/sh
# Args are appended to postgres: docker run IMAGE -c key=value ...
set -e
export PATH=/usr/lib/postgresql/$PG_MAJOR/bin:/bin
if [ ! -s "\$PGDATA/PG_VERSION" ]; then
  initdb -D "\$PGDATA" -U postgres --auth=trust --no-locale -E UTF8 --no-sync >/tmp/initdb.log 2>&1 ||
    { cat /tmp/initdb.log >&2; exit 1; }
  echo "host all all 0.0.0.0/0 trust" >> "\$PGDATA/pg_hba.conf"
  echo "host replication all 0.0.0.0/0 trust" >> "\$PGDATA/pg_hba.conf"
fi
exec postgres -D "\$PGDATA" -c listen_addresses='*' -c wal_level=logical \\
  -c max_replication_slots=20 -c max_wal_senders=20 "\$@"
ENTRY
chmod 755 $R/entry.sh
if [ "${BAKE_DATA:-0}" = 1 ]; then
  # optional: initdb at build time. Saves initdb at container start, but under the vfs storage
  # driver the extra ~40 MB are copied on every container create: slower overall there.
  chown "$PGUID:$PGGID" varfs/var/lib/postgresql
  (cd / && runuser -u postgres -- "/usr/lib/postgresql/$PG_MAJOR/bin/initdb" -D "$ctx/varfs/var/lib/postgresql/data" \
     -U postgres --auth=trust --no-locale -E UTF8 --no-sync >/dev/null)
  printf 'host all all 0.0.0.0/0 trust\nhost replication all 0.0.0.0/0 trust\n' >> varfs/var/lib/postgresql/data/pg_hba.conf
fi
cat > Dockerfile <<DOCKERFILE
FROM scratch
LABEL pg-version="$PGVER"
COPY rootfs/ /
COPY --chown=$PGUID:$PGGID varfs/ /
ENV PGDATA=/var/lib/postgresql/data LANG=C TZ=UTC
USER $PGUID:$PGGID
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "/entry.sh"]
DOCKERFILE
say "building $TAG ($PGVER)"
# the legacy builder (no buildx on Debian's docker.io) prints a deprecation notice: harmless
docker build -q -t "$TAG" . >"$ctx/build.log" 2>&1 || { cat "$ctx/build.log" >&2; die "docker build failed"; }
say "$(docker image inspect "$TAG" --format "built $TAG {{.Id}} {{.Size}} bytes")"
