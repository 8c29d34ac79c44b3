#!/usr/bin/env bash
# Idempotent Docker engine bring-up for CI (Debian, root, no systemd), used by the container
# integration tests (server/tests/containers). See docs: testing.md §2.
#   scripts/docker-up.sh          exit 0 once `docker info` works; non-zero with a clear message
# Fast path: an engine that already answers is left alone (about 0.1 s).
# Otherwise: installs docker.io when dockerd is missing (root only), starts
# `dockerd --storage-driver=vfs` in the background with a log file, waits up to DOCKERD_TIMEOUT.
# Env: DOCKERD_TIMEOUT (s, default 60), DOCKERD_LOG (default /var/log/dockerd-ci.log),
#      DOCKERD_CMD (default "dockerd --storage-driver=vfs"), DOCKERD_PIDFILE (default /var/run/docker.pid).
# The daemon outlives this script on purpose; stop one you started with:
#   kill "$(cat /var/run/docker.pid)"
set -uo pipefail
TIMEOUT=${DOCKERD_TIMEOUT:-60}
LOG=${DOCKERD_LOG:-/var/log/dockerd-ci.log}
DOCKERD_CMD=${DOCKERD_CMD:-dockerd --storage-driver=vfs}
PIDFILE=${DOCKERD_PIDFILE:-/var/run/docker.pid}
ms() { date +%s%3N; }
T0=$(ms)
say() { echo "docker-up: [$(( $(ms) - T0 )) ms] $*" >&2; }
die() {
  say "ERROR: $*"
  if [ -f "$LOG" ]; then echo "--- last lines of $LOG:" >&2; tail -n 25 "$LOG" >&2; fi
  exit 1
}
engine_ok() { timeout 10 docker info >/dev/null 2>&1; }   # a hung daemon must not hang CI

if command -v docker >/dev/null && engine_ok; then
  say "engine already running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi

if ! command -v dockerd >/dev/null; then
  [ "$(id -u)" = 0 ] || die "dockerd is missing and we are not root: cannot apt-get install docker.io"
  say "installing docker.io"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; } \
      >/tmp/docker-up-apt.log 2>&1 \
    || { tail -n 20 /tmp/docker-up-apt.log >&2; die "apt-get install docker.io failed"; }
  say "installed docker.io"
fi
command -v docker >/dev/null || die "the docker CLI is not installed (apt-get install -y docker.io provides one)"

started_pid=""
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE" 2>/dev/null)" 2>/dev/null; then
  say "dockerd already running (pid $(cat "$PIDFILE")) but not answering yet; waiting for it"
else
  [ "$(id -u)" = 0 ] || die "dockerd is not running and needs root to start"
  say "starting: $DOCKERD_CMD (log: $LOG)"
  # nohup + background + setsid: the daemon outlives this script and its process group
  # shellcheck disable=SC2086
  nohup setsid $DOCKERD_CMD >"$LOG" 2>&1 </dev/null &
  started_pid=$!
  say "dockerd pid $started_pid"
fi

deadline=$(( $(ms) + TIMEOUT * 1000 ))
until engine_ok; do
  if [ -n "$started_pid" ] && ! kill -0 "$started_pid" 2>/dev/null; then
    die "dockerd exited during startup"
  fi
  if [ "$(ms)" -ge "$deadline" ]; then
    if [ -n "$started_pid" ]; then kill "$started_pid" 2>/dev/null; fi
    die "engine not ready after ${TIMEOUT}s"
  fi
  sleep 0.2
done
say "engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
