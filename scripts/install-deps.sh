#!/usr/bin/env bash
# Installs what ampere needs on Debian 12 (bookworm), idempotently.
#   scripts/install-deps.sh           as root: what the test suite needs (apt-get update only
#                                     when something is missing)
#   scripts/install-deps.sh --run     as root: only what building and running ampere needs
#                                     (scripts/run.sh)
#   scripts/install-deps.sh --check   only report; exit 1 if something is missing (with --run:
#                                     of the running set)
# Running needs: PostgreSQL server binaries (/usr/lib/postgresql/*/bin) and pg_isready for the
# embedded cluster, psql (to talk to it), setpriv (root runs the cluster as the postgres OS
# user), and to build, a C compiler with libclang (the pg_query crate builds Postgres's own
# parser, libpg_query). The test suite adds ss, runuser, busybox-static (for
# scripts/build-pg-image.sh) and node + npm (>= 18). Docker is scripts/docker-up.sh's business.
# Takes well under a second when everything is present. Not root and something missing:
# prints the apt-get command and exits 1.
set -euo pipefail

check_only=0
set_name=test
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    --run) set_name=run ;;
    *) echo "usage: $0 [--run] [--check]" >&2; exit 2 ;;
  esac
done

have() { command -v "$1" >/dev/null 2>&1; }
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
have_pg_server() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then return 0; fi
  done
  return 1
}

# bindgen loads libclang.so or libclang-<version>.so; libclang-cpp (which other packages pull
# in) is a different library and does not count.
have_libclang() {
  local g
  for g in '/usr/lib/llvm-*/lib/libclang.so*' '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' \
    '/usr/lib/*/libclang.so*' '/usr/lib/*/libclang-[0-9]*.so*'; do
    compgen -G "$g" >/dev/null && return 0
  done
  return 1
}

# Debian package names of what is missing ("postgresql-server" is resolved below)
missing() {
  have_pg_server || echo postgresql-server
  { have psql && have pg_isready; } || echo postgresql-client
  have setpriv || echo util-linux
  have cc || echo gcc
  have_libclang || echo libclang-dev
  if [ "$set_name" = run ]; then return 0; fi
  have ss || echo iproute2
  have runuser || echo util-linux
  installed busybox-static || echo busybox-static
  have node || echo nodejs
  have npm || echo npm
}

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

mapfile -t todo < <(missing | sort -u)
if [ "${#todo[@]}" -eq 0 ]; then
  if [ "$set_name" = test ] && [ "$(node_major)" -lt 18 ]; then
    echo "install-deps: node $(node --version) is too old: @electric-sql/client needs Node >= 18" >&2
    exit 1
  fi
  exit 0
fi

echo "install-deps: missing: ${todo[*]}" >&2
if [ "$check_only" = 1 ]; then exit 1; fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: not root; run as root:" >&2
  echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${todo[*]/postgresql-server/postgresql-15}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
packages=()
for p in "${todo[@]}"; do
  if [ "$p" = postgresql-server ]; then
    # Debian 12 ships 15; elsewhere take the distribution's default major version
    if apt-cache show postgresql-15 >/dev/null 2>&1; then p=postgresql-15; else p=postgresql; fi
  fi
  packages+=("$p")
done
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

mapfile -t still < <(missing)
if [ "${#still[@]}" -ne 0 ]; then
  echo "install-deps: still missing after apt-get install: ${still[*]}" >&2
  exit 1
fi
echo "install-deps: installed ${packages[*]}" >&2
