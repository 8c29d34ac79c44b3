#!/usr/bin/env bash
# A first run as the README says, on a fresh clone: clones this repository's committed HEAD
# into a fresh directory and runs `scripts/run.sh` there with no DATABASE_URL and the default
# (relative) storage dir, so ampere initializes an embedded PostgreSQL in ./persistent — first
# as root, then as an unprivileged user (created if missing). Each run must: announce its
# initdb, answer /v1/health 200, serve a shape whose rows and a later insert arrive over HTTP,
# run the cluster as the right OS user (postgres for root, else the user itself), stop cleanly
# on SIGTERM, and keep the cluster's password out of its output and the server log.
#   scripts/test-fresh-clone.sh              as root (Debian 12)
# Env: AMPERE_FRESH_USER (default ampere-fresh), AMPERE_FRESH_DIR (default /var/tmp/ampere-fresh),
#      AMPERE_FRESH_PATCH: a patch applied onto the clone (to try uncommitted changes).
# Build cost: one release build per run, root's, in $AMPERE_FRESH_DIR/target (its own: one
# shared with other builds would flip between two CARGO_HOMEs). The user's run builds in its
# default (~/.cache/ampere/target, run.sh's choice when /var/tmp/ampere-target is not its),
# refreshed from root's just before, and finds everything fresh: both clones land at the same
# path, both runs share one CARGO_HOME ($AMPERE_FRESH_DIR/cargo-home, the user's, seeded from
# root's registry cache: cargo keys a dependency's freshness on its source path there), and
# files whose content is unchanged since the last clone get back that clone's mtimes (changed
# files keep the clone's), so cargo rebuilds what changed instead of every workspace crate.
# The user gets root's Rust toolchain as hard links (no copy; root's files stay read-only to
# it). A cold build as the user (no seeding) takes as long as root's first one.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

user=${AMPERE_FRESH_USER:-ampere-fresh}
base=${AMPERE_FRESH_DIR:-/var/tmp/ampere-fresh}
clone=$base/ampere
mtimes=$base/mtimes
cargo_home=$base/cargo-home
build_timeout=1200 # s, a cold release build on 2 busy cores (9 min measured)
health_timeout=60 # s, after the build
root_target=$base/target

log() { printf 'test-fresh-clone: %s (at %ds)\n' "$*" "$SECONDS" >&2; }
fail() {
  printf 'test-fresh-clone: FAIL: %s\n' "$*" >&2
  if [ -n "${out:-}" ] && [ -f "$out" ]; then tail -n 40 "$out" >&2; fi
  exit 1
}

if [ "$(id -u)" != 0 ]; then
  echo "test-fresh-clone: run as root (it creates the unprivileged user)" >&2
  exit 2
fi
for tool in git curl ss psql setpriv useradd; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/install-deps.sh)"
done

pid=""
stop_started() { if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; fi; }
trap stop_started EXIT

free_port() {
  local p
  for p in $(shuf -i 3100-3999 -n 100); do
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return 0; }
  done
  fail "no free port in 3100-3999"
}

# git clone into $clone (removed first), owned by $1; unchanged files get their last mtimes
fresh_clone() {
  local owner=$1
  rm -rf "$clone"
  mkdir -p "$base"
  git clone -q --no-hardlinks "$repo" "$clone"
  # --index: the index then names the patched blobs, which the mtimes below key on
  if [ -n "${AMPERE_FRESH_PATCH:-}" ]; then git -C "$clone" apply --index "$AMPERE_FRESH_PATCH"; fi
  # "<blob> <path>" now, against "<blob> <mtime> <path>" of the last clone
  local now
  now=$(mktemp)
  git -C "$clone" ls-files -s | awk '{ sub(/^[^ ]+ /, ""); sub(/ [0-9]+\t/, " "); print }' >"$now"
  if [ -f "$mtimes" ]; then
    awk 'NR == FNR { split($0, f, " "); keep[f[1] " " substr($0, length(f[1] f[2]) + 3)] = f[2]; next }
         ($0 in keep) { print keep[$0] " " substr($0, index($0, " ") + 1) }' "$mtimes" "$now" |
      while read -r mtime path; do touch -m -d "@$mtime" "$clone/$path"; done
  fi
  while read -r blob path; do
    printf '%s %s %s\n' "$blob" "$(stat -c %.9Y "$clone/$path")" "$path"
  done <"$now" >"$mtimes.new"
  mv "$mtimes.new" "$mtimes"
  rm -f "$now"
  if [ "$owner" != root ]; then chown -R "$owner:" "$clone"; fi
}

# the unprivileged user, root's toolchain as hard links, its own CARGO_HOME and target dir
provision_user() {
  id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
  home=$(getent passwd "$user" | cut -d: -f6)
  local sysroot tc
  sysroot=$(rustc --print sysroot)
  tc=$home/.rustup/toolchains/$(basename "$sysroot")
  if [ "$("$tc/bin/rustc" -vV 2>/dev/null)" != "$(rustc -vV)" ]; then
    rm -rf "$tc" "$tc.partial"
    install -d -o "$user" -g "$user" "$home/.rustup" "$home/.rustup/toolchains"
    cp -al "$sysroot" "$tc.partial"
    mv "$tc.partial" "$tc"
  fi
  user_path=$tc/bin:/usr/local/bin:/usr/bin:/bin
  local registry=${CARGO_HOME:-$HOME/.cargo}/registry
  if [ ! -d "$cargo_home/registry/index" ] && [ -d "$registry/index" ] && [ -d "$registry/cache" ]
  then
    mkdir -p "$cargo_home/registry"
    cp -a "$registry/index" "$registry/cache" "$cargo_home/registry/"
  fi
  mkdir -p "$cargo_home"
  chown -R "$user:" "$cargo_home" # again after root's run: its new files are root's
}

# the user's default target dir, refreshed from root's release build
seed_user_target() {
  local target=$home/.cache/ampere/target
  rm -rf "$target/release"
  install -d -o "$user" -g "$user" "$home/.cache" "$home/.cache/ampere" "$target"
  cp -a "$root_target/release" "$target/"
  chown -R "$user:" "$target"
}

# starts run.sh in $clone as $1 (root or the user) in the background: sets pid, port, out
start_run() {
  local who=$1
  port=$(free_port)
  out=$base/run-$who.log
  local clean=(-u DATABASE_URL -u ELECTRIC_STORAGE_DIR -u STORAGE_DIR -u CARGO_TARGET_DIR
    -u ELECTRIC_SECRET -u ELECTRIC_INSECURE)
  : >"$out" # before the background start, so wait_healthy never greps a missing file
  if [ "$who" = root ]; then
    (cd "$clone" && exec env "${clean[@]}" CARGO_HOME="$cargo_home" \
      CARGO_TARGET_DIR="$root_target" ELECTRIC_PORT="$port" scripts/run.sh) >>"$out" 2>&1 &
  else
    # setpriv execs in place, so $! is run.sh, which execs ampere: the pid to signal
    (cd "$clone" && exec setpriv --reuid="$user" --regid="$user" --init-groups -- \
      env -i HOME="$home" USER="$user" LOGNAME="$user" PATH="$user_path" \
      CARGO_HOME="$cargo_home" ELECTRIC_PORT="$port" scripts/run.sh) >>"$out" 2>&1 &
  fi
  pid=$!
}

health_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$port/v1/health" || true; }

wait_healthy() {
  local deadline=$((SECONDS + build_timeout))
  until grep -q 'Finished `release`' "$out"; do
    kill -0 "$pid" 2>/dev/null || fail "run.sh exited during the build"
    [ "$SECONDS" -lt "$deadline" ] || fail "no release build within ${build_timeout}s"
    sleep 1
  done
  log "built"
  deadline=$((SECONDS + health_timeout))
  until [ "$(health_code)" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || fail "ampere exited before /v1/health answered 200"
    [ "$SECONDS" -lt "$deadline" ] || fail "/v1/health not 200 within ${health_timeout}s"
    sleep 0.5
  done
  log "/v1/health 200 on :$port"
}

# runs a command as $1 (root or the user), in $clone
as_who() {
  local who=$1
  shift
  if [ "$who" = root ]; then
    (cd "$clone" && "$@")
  else
    (cd "$clone" && setpriv --reuid="$user" --regid="$user" --init-groups -- \
      env -i HOME="$home" PATH="$user_path" "$@")
  fi
}

# the value of header $1 in the headers file $2
header() { tr -d '\r' <"$2" | awk -v h="$1" 'tolower($1) == h ":" { print $2 }' | tail -n 1; }

check_run() {
  local who=$1 expect_owner=$2
  local line url pwfile
  grep -q 'initializing an embedded PostgreSQL cluster in .*/persistent/embedded-postgres' "$out" ||
    fail "no initdb announcement"
  line=$(grep -m1 '^ampere: embedded PostgreSQL at ' "$out") || fail "no connection line"
  url=$(sed -E 's/^ampere: embedded PostgreSQL at ([^ ]+) .*/\1/' <<<"$line")
  pwfile=$(sed -E 's/.*\(password in (.+)\)$/\1/' <<<"$line")
  [ "$pwfile" = "$clone/persistent/embedded-postgres/superuser-password" ] ||
    fail "password file $pwfile is not in the default storage dir"
  [ "$(stat -c '%a %U' "$pwfile")" = "600 $who" ] ||
    fail "password file is $(stat -c '%a %U' "$pwfile"), want 600 $who"
  [ "$(stat -c %U "$clone/persistent/embedded-postgres/data")" = "$expect_owner" ] ||
    fail "the cluster does not run as $expect_owner"

  # what the README tells a user to do: the printed URL, the password from its file
  as_who "$who" sh -c 'PGPASSWORD=$(cat "$1") exec psql -X -q -v ON_ERROR_STOP=1 "$2" \
      -c "CREATE TABLE items (id int PRIMARY KEY, title text)" \
      -c "INSERT INTO items VALUES (1, '"'one'"')"' sh "$pwfile" "$url" ||
    fail "psql with the printed URL and the password file"

  local body hdrs=$base/headers shape="http://127.0.0.1:$port/v1/shape?table=items"
  body=$(curl -sS -m 30 -D "$hdrs" "$shape&offset=-1") || fail "initial shape request"
  grep -q '"title":"one"' <<<"$body" || fail "snapshot lacks row 1: $body"
  local handle offset deadline
  handle=$(header electric-handle "$hdrs")
  offset=$(header electric-offset "$hdrs")
  as_who "$who" sh -c 'PGPASSWORD=$(cat "$1") exec psql -X -q -v ON_ERROR_STOP=1 "$2" \
      -c "INSERT INTO items VALUES (2, '"'two'"')"' sh "$pwfile" "$url" || fail "psql insert"
  deadline=$((SECONDS + 30))
  until grep -q '"title":"two"' <<<"$body"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the insert never reached the shape: $body"
    sleep 0.2
    body=$(curl -sS -m 30 -D "$hdrs" "$shape&handle=$handle&offset=$offset") ||
      fail "shape request at $offset"
    offset=$(header electric-offset "$hdrs")
  done
  log "shape synced: snapshot row and a later insert"

  kill -TERM "$pid"
  local status=0 waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 60 ]; do sleep 0.5; waited=$((waited + 1)); done
  kill -0 "$pid" 2>/dev/null && fail "ampere still running 30 s after SIGTERM"
  wait "$pid" || status=$?
  pid=""
  [ "$status" = 0 ] || fail "ampere exited with status $status after SIGTERM"
  [ ! -e "$clone/persistent/embedded-postgres/data/postmaster.pid" ] ||
    fail "the embedded PostgreSQL was left running"
  local pw
  pw=$(cat "$pwfile")
  [ "${#pw}" -ge 16 ] || fail "password file holds no password"
  if grep -qF "$pw" "$out" "$clone/persistent/embedded-postgres/server.log"; then
    fail "the password is in the log"
  fi
  log "stopped cleanly on SIGTERM; no password in the logs"
}

log "$user: provision (toolchain links, CARGO_HOME)"
provision_user

log "root: clone $(git -C "$repo" rev-parse --short HEAD) into $clone, scripts/run.sh"
fresh_clone root
start_run root
wait_healthy
check_run root postgres
rm -rf "$clone"
chown -R "$user:" "$cargo_home"

log "$user: refresh its target dir from root's, clone, scripts/run.sh"
seed_user_target
fresh_clone "$user"
start_run "$user"
wait_healthy
check_run "$user" "$user"
rm -rf "$clone"
log "done"
