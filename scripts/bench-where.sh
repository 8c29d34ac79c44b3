#!/usr/bin/env bash
# Where-clause benchmark: ampere's ingest and initial sync against Postgres's own tools on the
# same data, measured in the same run, reported as ratios (these machines are shared and noisy,
# so absolute times mean little). Not a test: run it by hand; it prints one JSON line.
#
#   scripts/bench-where.sh                # ROWS=1000000 (1M rows, 100-row transactions)
#   ROWS=200000 scripts/bench-where.sh    # a quicker run
#   BENCH_PHASES=ilike AMPERE_WRAP="perf record -g -o /tmp/ampere.perf --" scripts/bench-where.sh
#                                         # one phase (eq, ilike, sync), ampere under a profiler
#
# (a) ingest of a ROWS-row backlog in 100-row transactions with 1,000 shapes `n = k` (every row
#     matches exactly one), until the slot's confirmed_flush_lsn reaches the WAL end, against
#     pg_recvlogical (pgoutput) reading the same backlog from its own slot; goal >= 0.5x.
# (b) the same with 100 shapes `title ILIKE '%xy%'` (no index applies); goal >= 0.1x.
# (c) the initial sync of a `where n = 7` shape (ROWS/1000 rows) from the ROWS-row table,
#     against `COPY (SELECT * FROM items WHERE n = 7) TO STDOUT`.
# Everything runs on loopback; the cluster and ampere are stopped by PID on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${ROWS:-1000000}
TXN_ROWS=100
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ampere-target}"
log() { echo "bench-where: $*" >&2; }

scripts/install-deps.sh
cargo build --release --locked -p ampere-server --bin ampere >&2
AMPERE="$CARGO_TARGET_DIR/release/ampere"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)

eval "$(scripts/pg-throwaway.sh start)"
WORK=$(mktemp -d /tmp/bench-where.XXXX)
AMPERE_PID=
cleanup() {
  [ -n "$AMPERE_PID" ] && kill "$AMPERE_PID" 2>/dev/null && wait "$AMPERE_PID" 2>/dev/null || true
  scripts/pg-throwaway.sh stop "$PGTEST_DIR" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$(( 31000 + RANDOM % 1000 ))
psql_q() { psql "$DATABASE_URL" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
now() { date +%s.%N; }

start_ampere() {
  DATABASE_URL="$DATABASE_URL" ELECTRIC_PORT=$PORT ELECTRIC_INSECURE=true \
    ELECTRIC_STORAGE_DIR="$WORK/storage-$1" ELECTRIC_LOG_LEVEL=warning \
    ${AMPERE_WRAP:-} "$AMPERE" >"$WORK/ampere-$1.log" 2>&1 &
  AMPERE_PID=$!
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v1/health")" = 200 ] && return
    sleep 0.1
  done
  log "ampere did not become active"; cat "$WORK/ampere-$1.log" >&2; exit 1
}
stop_ampere() { kill -INT "$AMPERE_PID"; wait "$AMPERE_PID" 2>/dev/null || true; AMPERE_PID=; }

# Creates a shape and reads its initial sync to the end: prints the number of rows received.
sync_shape() { # where
  local url="http://127.0.0.1:$PORT/v1/shape?table=items&offset=-1" handle offset rows=0 body headers
  url="$url&where=$(jq -rn --arg w "$1" '$w|@uri')"
  while :; do
    headers=$(mktemp -p "$WORK"); body=$(curl -sf -D "$headers" "$url")
    rows=$(( rows + $(jq '[.[] | select(.headers.operation == "insert")] | length' <<<"$body") ))
    handle=$(awk -F': ' 'tolower($1)=="electric-handle"{print $2}' "$headers" | tr -d '\r')
    offset=$(awk -F': ' 'tolower($1)=="electric-offset"{print $2}' "$headers" | tr -d '\r')
    grep -qi '^electric-up-to-date' "$headers" && break
    url="http://127.0.0.1:$PORT/v1/shape?table=items&offset=$offset&handle=$handle&where=$(jq -rn --arg w "$1" '$w|@uri')"
  done
  echo "$rows"
}

# Fills the backlog: ROWS rows in TXN_ROWS-row transactions.
fill() { # first_id
  psql_q "CALL fill($1, $ROWS, $TXN_ROWS)"
}

# Ingest of one backlog by ampere (with the shapes created by `$2`) and by pg_recvlogical.
ingest_ratio() { # name shape-creator
  local name=$1 anchor_slot="anchor_$1" end t0 t1 t_pg t_ampere
  psql_q "TRUNCATE items"
  start_ampere "$name"
  "$2"
  psql_q "SELECT pg_create_logical_replication_slot('$anchor_slot', 'pgoutput')" >/dev/null
  stop_ampere
  fill 0
  end=$(psql_q "SELECT pg_current_wal_lsn()")
  t0=$(now)
  "$PG_BIN/pg_recvlogical" -d "$DATABASE_URL" --slot "$anchor_slot" --start --endpos "$end" \
    -o proto_version=1 -o publication_names=electric_publication_default -f /dev/null
  t1=$(now); t_pg=$(echo "$t1 - $t0" | bc -l)
  t0=$(now)
  start_ampere "$name"
  until [ "$(psql_q "SELECT confirmed_flush_lsn >= '$end' FROM pg_replication_slots WHERE slot_name = 'electric_slot_default'")" = t ]; do
    sleep 0.05
  done
  t1=$(now); t_ampere=$(echo "$t1 - $t0" | bc -l)
  stop_ampere
  psql_q "SELECT pg_drop_replication_slot('$anchor_slot')" >/dev/null
  psql_q "SELECT pg_drop_replication_slot('electric_slot_default')" >/dev/null
  log "$name: pg_recvlogical ${t_pg}s, ampere ${t_ampere}s (ampere's time includes its startup)"
  echo "$t_pg $t_ampere"
}

equality_shapes() {
  for k in $(seq 0 999); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/v1/shape?table=items&offset=-1&where=n%20%3D%20$k"
  done
}
ilike_shapes() {
  for k in $(seq 0 99); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/v1/shape?table=items&offset=-1&where=title%20ILIKE%20'%25$(printf %02x "$k")F%25'"
  done
}

command -v jq >/dev/null && command -v bc >/dev/null || {
  log "needs jq and bc: apt-get install -y jq bc"; exit 1; }
psql_q "CREATE TABLE items (id bigint PRIMARY KEY, n int NOT NULL, title text NOT NULL)"
psql_q "CREATE PROCEDURE fill(first bigint, total bigint, per_txn int) LANGUAGE plpgsql AS \$\$
BEGIN
  FOR t IN 0 .. (total / per_txn) - 1 LOOP
    INSERT INTO items
      SELECT first + t * per_txn + i, (t * per_txn + i) % 1000, md5((t * per_txn + i)::text)
      FROM generate_series(0, per_txn - 1) AS i;
    COMMIT;
  END LOOP;
END \$\$"

PHASES=${BENCH_PHASES:-eq ilike sync}
a_pg=0 a_ampere=0 b_pg=0 b_ampere=0 c_pg=0 c_ampere=0
phase() { case " $PHASES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if phase eq; then read -r a_pg a_ampere < <(ingest_ratio eq equality_shapes); fi
if phase ilike; then read -r b_pg b_ampere < <(ingest_ratio ilike ilike_shapes); fi

# (c) initial sync of `n = 7` from the full table, against COPY of the same rows.
if phase sync; then
  psql_q "TRUNCATE items"; fill 0; psql_q "VACUUM ANALYZE items"
  start_ampere sync
  t0=$(now); psql "$DATABASE_URL" -XAtq -c "COPY (SELECT * FROM items WHERE n = 7) TO STDOUT" >/dev/null
  c_pg=$(echo "$(now) - $t0" | bc -l)
  t0=$(now); synced=$(sync_shape "n = 7"); c_ampere=$(echo "$(now) - $t0" | bc -l)
  stop_ampere
  expected=$(( ROWS / 1000 ))
  [ "$synced" = "$expected" ] || { log "the n = 7 shape synced $synced rows, not $expected"; exit 1; }
fi

ratio() { if [ "$2" = 0 ]; then echo null; else echo "scale=3; $1 / $2" | bc -l; fi; }
printf '{"rows":%s,"txn_rows":%s,"eq1000_vs_pg_recvlogical":%s,"ilike100_vs_pg_recvlogical":%s,"initial_sync_vs_copy":%s,"seconds":{"eq_pg":%s,"eq_ampere":%s,"ilike_pg":%s,"ilike_ampere":%s,"copy":%s,"sync":%s}}\n' \
  "$ROWS" "$TXN_ROWS" "$(ratio "$a_pg" "$a_ampere")" "$(ratio "$b_pg" "$b_ampere")" \
  "$(ratio "$c_pg" "$c_ampere")" "$a_pg" "$a_ampere" "$b_pg" "$b_ampere" "$c_pg" "$c_ampere"
