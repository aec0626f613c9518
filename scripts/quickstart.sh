#!/usr/bin/env bash
# The Sluice quickstart in one command: builds sluice, starts an event display (the sink) and
# `sluice run -f examples/quickstart.yaml` (the broker, embedded mode, no cluster), sends two
# events — one the display receives, one whose subscriber is down and that ends up in the
# dead-letter sink — shows what the display printed, then stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p sluice
SLUICE=target/release/sluice
LOG=$(mktemp -d)
cleanup() { kill "${DISPLAY_PID:-}" "${RUN_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT

for port in 8080 8081 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use; stop what listens there (or a previous sluice) and retry" >&2
    exit 1
  fi
done

"$SLUICE" display --listen 127.0.0.1:8081 >"$LOG/display.txt" 2>&1 & DISPLAY_PID=$!
"$SLUICE" run -f examples/quickstart.yaml >"$LOG/run.txt" 2>&1 & RUN_PID=$!

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done

echo "\$ sluice send http://127.0.0.1:8080/default/default --type com.example.greeting --source /quickstart --data '{\"hello\":\"world\"}'"
"$SLUICE" send http://127.0.0.1:8080/default/default --type com.example.greeting --source /quickstart --data '{"hello":"world"}'
echo "\$ sluice send http://127.0.0.1:8080/default/default --type com.example.order.created --source /quickstart --data '{\"total\":42}'"
"$SLUICE" send http://127.0.0.1:8080/default/default --type com.example.order.created --source /quickstart --data '{"total":42}'

# The order's subscriber is down: 3 retries with exponential backoff (~1.4 s), then the
# dead-letter sink.
for _ in $(seq 1 100); do
  grep -q knativeerrordest "$LOG/display.txt" && break
  sleep 0.1
done
echo
echo "==> what the event display received:"
cat "$LOG/display.txt"
echo "==> sluice get:"
"$SLUICE" get
echo
echo "==> metrics (non-zero counters):"
curl -s http://127.0.0.1:9090/metrics | grep -E '^sluice_events_[a-z_]+_total' | grep -v ' 0$' || true
