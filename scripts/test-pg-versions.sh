#!/usr/bin/env bash
# The PostgreSQL version matrix: the Postgres-facing tests against other major versions
# (scripts/test.sh runs everything against Debian's PostgreSQL 15). docs/testing-pg-versions.md.
#
#   scripts/test-pg-versions.sh [MAJOR...]      # default: 14 16 17 18
#
# For each MAJOR, with PG_BIN set to the binaries scripts/pg-versions.sh unpacks:
#   io-real     the integration test binaries that start a real Postgres: embedded_pg, lock,
#               pg_port (catalog, publication DDL, snapshots, slots, time zone data),
#               replication_conn (the replication protocol, pgoutput, slots, keepalives),
#               snapshot_contract, tls, and where_differential (the where-clause evaluator
#               against that server's own filtering: PG 17's infinite intervals included);
#               not the tests that never start Postgres.
#   server      server/tests/{startup,metrics}.rs: the ampere binary with its embedded cluster
#               (PG_BIN) and on the shared test cluster; metrics reads pg_replication_slots.
#   conformance scripts/conformance.sh: the official client against ampere on that version.
# Prints one summary line per version; exits non-zero when any version failed. The full output
# of every part is kept under $PG_MATRIX_LOGS (default: a fresh /tmp/ampere-pg-matrix.* dir).
#
# Builds nothing that scripts/test.sh has not built: the test binaries come from
# `cargo test --workspace --no-run` (same features, so a no-op after `cargo test --workspace`),
# and AMPERE_BIN defaults to the debug binary test.sh's conformance step built.
#
# Env: PG_MATRIX_PARTS            parts to run (default "io-real server conformance")
#      PG_MATRIX_TEST_TIMEOUT     seconds per test binary and version (default 180)
#      PG_MATRIX_CONFORMANCE_TIMEOUT  seconds for the conformance suite per version (default 240;
#                                 it takes 20-40 s when it passes)
#      AMPERE_BIN                 ampere binary for the conformance suite
#      AMPERE_PG_CACHE, AMPERE_PG_VERSION_<M>   see scripts/pg-versions.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PARTS=${PG_MATRIX_PARTS:-io-real server conformance}
TEST_TIMEOUT=${PG_MATRIX_TEST_TIMEOUT:-180}
CONFORMANCE_TIMEOUT=${PG_MATRIX_CONFORMANCE_TIMEOUT:-240}
# <crate folder>:<test target> of the Postgres-facing integration tests
TESTS_IO_REAL="io-real:embedded_pg io-real:lock io-real:pg_port io-real:replication_conn \
io-real:snapshot_contract io-real:tls io-real:where_differential"
TESTS_SERVER="server:startup server:metrics server:generated_columns server:manual_publishing \
server:partitioned"

log() { echo "test-pg-versions: $*" >&2; }
has_part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

[ $# -gt 0 ] || set -- 14 16 17 18
LOGS=${PG_MATRIX_LOGS:-$(mktemp -d /tmp/ampere-pg-matrix.XXXXXX)}
mkdir -p "$LOGS"
start_all=$SECONDS

# --- binaries of every version (downloads once per machine) -------------------------------------
mapfile -t BINS < <(scripts/pg-versions.sh "$@")
[ "${#BINS[@]}" -eq $# ] || { log "scripts/pg-versions.sh failed"; exit 1; }

# --- test executables: "folder:target<TAB>executable<TAB>crate dir", one per line --------------
wanted=""
if has_part io-real; then wanted+=" $TESTS_IO_REAL"; fi
if has_part server; then wanted+=" $TESTS_SERVER"; fi
EXES=()
if [ -n "$wanted" ]; then
  test_args=()
  for t in $wanted; do test_args+=(--test "${t#*:}"); done
  log "cargo test --workspace --locked --no-run ${test_args[*]}"
  cargo test --workspace --locked --no-run --message-format=json-render-diagnostics \
    "${test_args[@]}" > "$LOGS/cargo-build.json"
  mapfile -t EXES < <(WANTED="$wanted" node -e '
    const wanted = new Set(process.env.WANTED.trim().split(/\s+/))
    const path = require("path")
    for (const line of require("fs").readFileSync(process.argv[1], "utf8").split("\n")) {
      if (!line.startsWith("{")) continue
      const m = JSON.parse(line)
      if (m.reason !== "compiler-artifact" || !m.executable || !m.profile.test) continue
      const key = `${path.basename(path.dirname(m.manifest_path))}:${m.target.name}`
      if (m.target.kind.includes("test") && wanted.has(key))
        console.log([key, m.executable, path.dirname(m.manifest_path)].join("\t"))
    }' "$LOGS/cargo-build.json")
  wanted_count=$(echo $wanted | wc -w)
  if [ "${#EXES[@]}" -ne "$wanted_count" ]; then
    log "found ${#EXES[@]} of $wanted_count test executables in $LOGS/cargo-build.json"; exit 1
  fi
fi

if has_part conformance; then
  export AMPERE_BIN=${AMPERE_BIN:-$CARGO_TARGET_DIR/debug/ampere}
  if [ ! -x "$AMPERE_BIN" ]; then
    log "building $AMPERE_BIN"
    cargo build --locked -p ampere-server --bin ampere
  fi
fi

# --- one version --------------------------------------------------------------------------------
exit_reason() {
  if [ "$1" = 124 ] || [ "$1" = 137 ]; then echo "timed out after $2 s"; else echo "exit $1"; fi
}

# Runs one test executable; appends "passed failed" to $counts and failing names to $failures.
run_test_exe() {
  local key=$1 exe=$2 dir=$3 bin=$4 out=$5 rc=0
  (cd "$dir" && PG_BIN=$bin CARGO_MANIFEST_DIR=$dir timeout -k 10 "$TEST_TIMEOUT" "$exe") \
    > "$out" 2>&1 || rc=$?
  local passed failed
  passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed.*/\1/p' "$out" | tail -n1)
  failed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) failed.*/\1/p' "$out" | tail -n1)
  passed=${passed:-0} failed=${failed:-0}
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1   # no result line: timed out or crashed
    failures+=" ${key#*:}($(exit_reason "$rc" "$TEST_TIMEOUT"))"
  fi
  while read -r name; do failures+=" ${key#*:}::$name"; done \
    < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$out")
  if [ "$rc" -ne 0 ]; then FAILED_LOGS+=("$out"); fi
  part_passed=$((part_passed + passed)) part_failed=$((part_failed + failed))
}

run_version() {
  local major=$1 bin=$2 start=$SECONDS version line="" ok=1
  version=$("$bin/postgres" --version 2>/dev/null | awk '{print $3}') || version=$major
  [ -n "$version" ] || version=$major
  failures=""
  for part in io-real server; do
    has_part "$part" || continue
    part_passed=0 part_failed=0
    local entry key exe dir
    for entry in "${EXES[@]}"; do
      IFS=$'\t' read -r key exe dir <<< "$entry"
      [ "${key%%:*}" = "$part" ] || continue
      run_test_exe "$key" "$exe" "$dir" "$bin" "$LOGS/$major-${key#*:}.log"
    done
    line+=" $part $part_passed passed $part_failed failed;"
    [ "$part_failed" -eq 0 ] || ok=0
  done
  if has_part conformance; then
    local out=$LOGS/$major-conformance.log rc=0 passed failed
    PG_BIN=$bin CONFORMANCE_SKIP_BUILD=1 timeout -k 10 "$CONFORMANCE_TIMEOUT" \
      scripts/conformance.sh > "$out" 2>&1 || rc=$?
    passed=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$out" | tail -n1)
    failed=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$out" | tail -n1)
    passed=${passed:-0} failed=${failed:-0}
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
      failed=1
      failures+=" conformance($(exit_reason "$rc" "$CONFORMANCE_TIMEOUT"))"
    fi
    while read -r name; do failures+=" conformance::'$name'"; done \
      < <(sed -n 's/^not ok [0-9]* - \(.*\)$/\1/p' "$out")
    if [ "$rc" -ne 0 ]; then FAILED_LOGS+=("$out"); fi
    line+=" conformance $passed passed $failed failed;"
    [ "$failed" -eq 0 ] || ok=0
  fi
  local verdict=PASS
  [ "$ok" = 1 ] || verdict=FAIL
  SUMMARY+=("PostgreSQL $version: $verdict ($((SECONDS - start)) s):${line%;}")
  if [ "$ok" != 1 ]; then SUMMARY+=("  failing:$failures"); fi
  [ "$ok" = 1 ]
}

SUMMARY=()
FAILED_LOGS=()
status=0
MAJORS=("$@")
for i in "${!MAJORS[@]}"; do
  log "PostgreSQL ${MAJORS[$i]}: PG_BIN=${BINS[$i]}"
  run_version "${MAJORS[$i]}" "${BINS[$i]}" || status=1
done

echo
echo "== PostgreSQL version matrix ($((SECONDS - start_all)) s; logs in $LOGS)"
printf '%s\n' "${SUMMARY[@]}"
# Why each failing test binary failed: its panic messages (the logs may not outlive the run).
for out in "${FAILED_LOGS[@]}"; do
  echo
  echo "== ${out#"$LOGS"/}: failures"
  # cargo test's "---- <test> stdout ----" sections, or node:test's "not ok" entries
  awk '/^---- .* stdout ----$/ || /^not ok / { show = 1; lines = 0 }
       /^(stack backtrace:|failures:$)/ || /^ok / { show = 0 }
       show && lines++ < 25' "$out"
done
if [ "$status" = 0 ] && [ -z "${PG_MATRIX_LOGS:-}" ]; then rm -rf "$LOGS"; fi
exit "$status"
