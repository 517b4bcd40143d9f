#!/usr/bin/env bash
# Runs every benchmark scenario against a fresh release server on loopback
# and appends one JSON line per run to bench/results.jsonl.
#   bench/run.sh            all scenarios (about 5 minutes)
#   bench/run.sh curves     only the subscriber curve
#   bench/run.sh signed-in  10,000 anonymous vs 10,000 signed-in subscribers
#   bench/run.sh chat       one chat room of 5,000 members vs changes, both signed in
#   bench/run.sh live       liveRows: time to a complete snapshot, and 1,000 live sets
#   bench/run.sh streams    rows/s through /streams/metrics, MiB/s through /streams/uploads
#   bench/run.sh hold|churn one scenario
# Needs: cargo build --release; PostgreSQL binaries (initdb, pg_ctl);
# taskset (util-linux). The server runs on core 0; its Postgres and the
# load generator's clients on core 1, so server CPU per delivery is its own.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TIDEWIRE_BENCH_DIR:-/tmp/tidewire-bench}
# Signs the signed-in scenario's tokens; the server verifies with it.
SECRET=${TIDEWIRE_BENCH_SECRET:-tidewire-bench-secret-0123456789abcdef}
OUT=bench/results.jsonl
LOADGEN=target/release/loadgen
mkdir -p "$DATA"

start_server() {
  stop_server
  env -u DATABASE_URL TIDEWIRE_JWT_SECRET="$SECRET" taskset -c 0 ./target/release/tidewire \
    --data-dir "$DATA/pg" --listen 127.0.0.1:4000 --log warn >"$DATA/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do curl -sf localhost:4000/readyz >/dev/null && break; sleep 0.2; done
  # Postgres (started by the server, so on core 0) moves to core 1 with
  # everything it has forked so far; later backends inherit it.
  local postmaster
  postmaster=$(head -n 1 "$DATA/pg/postmaster.pid")
  for pid in $postmaster $(pgrep -P "$postmaster"); do taskset -a -p -c 1 "$pid" >/dev/null; done
  export DATABASE_URL="postgres://postgres:$(cat "$DATA/pg/tidewire.password")@127.0.0.1:$(sed -n 4p "$DATA/pg/postmaster.pid")/tidewire"
}
stop_server() {
  if [ -n "${SERVER:-}" ]; then
    kill -TERM "$SERVER" 2>/dev/null || true
    # Until the process and its embedded Postgres are gone.
    for _ in $(seq 300); do
      kill -0 "$SERVER" 2>/dev/null || [ -e "$DATA/pg/postmaster.pid" ] || break
      sleep 0.1
    done
    SERVER=
  fi
}
trap stop_server EXIT

run() { # label, loadgen args…
  local label=$1; shift
  start_server
  echo "== $label: loadgen $*" >&2
  taskset -c 1 "$LOADGEN" "$@" --server-pid "$SERVER" | sed "s/^{/{\"label\":\"$label\",/" | tee -a "$OUT"
}

what=${1:-all}
if [ "$what" = all ] || [ "$what" = signed-in ]; then
  run fanout-10000-anonymous fanout --subscribers 10000 --rate 20 --seconds 15 --processes 2 --sources 8
  run fanout-10000-signed-in fanout --subscribers 10000 --rate 20 --seconds 15 --processes 2 --sources 8 --sign-in-with "$SECRET"
fi
if [ "$what" = all ] || [ "$what" = chat ]; then
  run chat-room-5000 fanout --subscribers 5000 --rate 20 --seconds 15 --processes 2 --sources 8 --sign-in-with "$SECRET" --chat
  run changes-5000-signed-in fanout --subscribers 5000 --rate 20 --seconds 15 --processes 2 --sources 8 --sign-in-with "$SECRET"
fi
if [ "$what" = all ] || [ "$what" = live ]; then
  for n in 1000 10000 100000; do
    start_server
    echo "== snapshot of $n rows" >&2
    taskset -c 1 "$LOADGEN" snapshot --rows "$n" --server-pid "$SERVER" | sed "s/^{/{\"label\":\"snapshot-$n\",/" | tee -a "$OUT"
  done
  run live-1000x100 fanout --subscribers 1000 --rate 100 --seconds 10 --processes 2 --sources 8 --live
  run changes-1000x100 fanout --subscribers 1000 --rate 100 --seconds 10 --processes 2 --sources 8
fi
if [ "$what" = all ] || [ "$what" = streams ]; then
  start_server
  echo "== ingest" >&2
  taskset -c 1 "$LOADGEN" ingest --rows 2000000 --requests 2 --sign-in-with "$SECRET" --server-pid "$SERVER" | sed 's/^{/{"label":"ingest-2000000",/' | tee -a "$OUT"
  start_server
  echo "== upload" >&2
  taskset -c 1 "$LOADGEN" upload --mebibytes 1024 --sign-in-with "$SECRET" --server-pid "$SERVER" | sed 's/^{/{"label":"upload-1024",/' | tee -a "$OUT"
fi
if [ "$what" = all ] || [ "$what" = curves ]; then
  for n in 1000 5000 10000 19000; do
    run "curve-$n" fanout --subscribers "$n" --rate 20 --seconds 15 --processes 2 --sources 8
  done
fi
if [ "$what" = all ]; then
  run latency-1000x1000 fanout --subscribers 1000 --rate 1000 --seconds 10 --writers 2 --processes 2 --sources 8
  run latency-100x1000 fanout --subscribers 100 --rate 1000 --seconds 10 --writers 2 --processes 1 --sources 2
  run latency-1000x100 fanout --subscribers 1000 --rate 100 --seconds 10 --processes 2 --sources 8
  start_server
  echo "== writes" >&2
  taskset -c 1 "$LOADGEN" writes --writers 8 --commits-per-writer 5000 | sed 's/^{/{"label":"writes-8",/' | tee -a "$OUT"
  start_server
  echo "== writes, durable" >&2
  taskset -c 1 "$LOADGEN" writes --writers 8 --commits-per-writer 2000 --durable | sed 's/^{/{"label":"writes-8-durable",/' | tee -a "$OUT"
fi
if [ "$what" = all ] || [ "$what" = hold ]; then
  run hold-19000 fanout --subscribers 19000 --rate 1 --seconds 3 --processes 2 --sources 8
fi
if [ "$what" = all ] || [ "$what" = churn ]; then
  start_server
  echo "== churn" >&2
  taskset -c 1 "$LOADGEN" churn --connections 10000 --processes 2 --sources 8 --concurrency 128 | sed 's/^{/{"label":"churn-10000",/' | tee -a "$OUT"
fi
