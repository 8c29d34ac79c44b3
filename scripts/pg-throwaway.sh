#!/usr/bin/env bash
# Throwaway PostgreSQL cluster with wal_level=logical, for tests and local runs.
#   eval "$(scripts/pg-throwaway.sh start [PORT])"  # exports PGTEST_DIR PGTEST_PORT DATABASE_URL
#   psql "$DATABASE_URL" -c 'SHOW wal_level'
#   scripts/pg-throwaway.sh stop "$PGTEST_DIR"
#   scripts/pg-throwaway.sh sweep                   # remove /tmp/pgtest* dirs with no live server
# PORT defaults to a free one in 55400-55499 (retried up to 5 times: free-port checks are racy).
# Env: PG_BIN (default: newest /usr/lib/postgresql/*/bin, else `pg_config --bindir`),
#      PGTEST_AUTH=trust|scram-sha-256 (superuser password "postgres" with scram).
# The Rust tests use io-real/src/embedded_pg.rs instead; this is the same recipe for shells.
# Reference: docs/testing.md §1.2 (shared docs).
set -euo pipefail

AUTH=${PGTEST_AUTH:-trust}
SUPERPW=postgres        # superuser password, only used with scram-sha-256

find_pg_bin() {
  local d
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$d" ] && command -v pg_config >/dev/null; then d=$(pg_config --bindir); fi
  echo "$d"
}
PG_BIN=$(find_pg_bin)

# postgres refuses to run as root: as root, run the server binaries as the postgres OS user.
is_root() { [ "$(id -u)" = 0 ]; }
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() {           # a port in [lo,hi] that nothing listens on (racy, so start() retries)
  local p
  for p in $(seq "${1:-55400}" "${2:-55499}" | shuf); do
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return 0; }
  done
  echo "no free port in ${1:-55400}-${2:-55499}" >&2; return 1
}

start() {
  local want_port=${1:-} dir port tries=0
  if [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/postgres" ]; then
    echo "pg-throwaway: no PostgreSQL server binaries (PG_BIN='$PG_BIN'); run scripts/install-deps.sh" >&2
    exit 1
  fi
  cd /                  # runuser keeps the cwd; postgres cannot read /root
  dir=$(mktemp -d /tmp/pgtest.XXXXXX)   # short: the socket path must stay under 107 bytes
  if is_root; then chown postgres:postgres "$dir"; fi
  fail() { echo "pg-throwaway: $1" >&2; tail -n 20 "$dir"/*.log >&2 2>/dev/null || true; rm -rf "$dir"; exit 1; }

  local args=(-D "$dir/data" -U postgres --no-locale -E UTF8 --no-sync --auth="$AUTH")
  if [ "$AUTH" != trust ]; then
    (umask 077; echo "$SUPERPW" > "$dir/pw")
    if is_root; then chown postgres:postgres "$dir/pw"; fi
    args+=(--pwfile="$dir/pw")
  fi
  as_pg "$PG_BIN/initdb" "${args[@]}" > "$dir/initdb.log" 2>&1 || fail "initdb failed"
  rm -f "$dir/pw"
  cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 200
fsync = off
full_page_writes = off
CONF
  # (leave synchronous_commit on: with it off, logical decoding sees a commit only
  #  after the WAL writer flushes it, up to ~200 ms later)
  until
    port=${want_port:-$(free_port)}
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 30 start >/dev/null
  do
    tries=$((tries+1))
    if [ -n "$want_port" ] || [ "$tries" -ge 5 ]; then fail "server did not start on port $port"; fi
  done
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 10 || fail "not ready"
  local pw=""; if [ "$AUTH" != trust ]; then pw=":$SUPERPW"; fi
  echo "export PGTEST_DIR='$dir' PGTEST_PORT=$port DATABASE_URL='postgresql://postgres$pw@127.0.0.1:$port/postgres'"
}

stop() {
  local dir=${1:?usage: stop PGTEST_DIR}
  case "$dir" in /tmp/pgtest*) ;; *) echo "pg-throwaway: refusing to remove '$dir' (not /tmp/pgtest*)" >&2; exit 2 ;; esac
  cd /
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
  fi
  rm -rf "$dir"
}

sweep() {               # throwaway dirs whose server and creator are gone
  local dir pid
  for dir in /tmp/pgtest.* /tmp/pgtest-*; do
    [ -d "$dir" ] || continue
    pid=$(head -n1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    case "$dir" in
      /tmp/pgtest-*)    # made by embedded_pg.rs: /tmp/pgtest-<creator pid>-...
        pid=${dir#/tmp/pgtest-}; pid=${pid%%-*}
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi ;;
      *)                # made by start(), which may still be running initdb: only old ones
        [ -n "$(find "$dir" -maxdepth 0 -mmin +10)" ] || continue ;;
    esac
    rm -rf "$dir"
  done
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop)  stop "${2:-}" ;;
  sweep) sweep ;;
  *) echo "usage: $0 start [PORT] | stop DIR | sweep" >&2; exit 2 ;;
esac
