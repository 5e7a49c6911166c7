# Prometheus (Debian package, installed if missing) on 127.0.0.1:$BILLRUN_TEST_PROM_PORT (default
# 45909), its history backfilled with promtool from tests/support/prometheus_usage.py (the
# quickstart's api calls as counters), long retention. The history is the same for every run, so
# a running instance with the same data is reused; one with other data (an older generator) is
# replaced. Exports BILLRUN_TEST_PROM_URL.
BILLRUN_TEST_PROM_PORT="${BILLRUN_TEST_PROM_PORT:-45909}"
export BILLRUN_TEST_PROM_URL="http://127.0.0.1:$BILLRUN_TEST_PROM_PORT"
billrun_prom_hash="$(cat tests/support/prometheus_usage.py fixtures/01-quickstart/usage/*.ndjson | sha256sum | cut -c1-16)"
billrun_prom_dir="$BILLRUN_TEST_CACHE/prometheus-$billrun_prom_hash"
if ! { billrun_pid_alive "$BILLRUN_TEST_CACHE/prometheus.pid" \
       && [ "$(cat "$BILLRUN_TEST_CACHE/prometheus.hash" 2>/dev/null)" = "$billrun_prom_hash" ] \
       && billrun_http_ok "$BILLRUN_TEST_PROM_URL/-/ready"; }; then
  if billrun_pid_alive "$BILLRUN_TEST_CACHE/prometheus.pid"; then
    kill "$(cat "$BILLRUN_TEST_CACHE/prometheus.pid")" 2>/dev/null || true
    sleep 1
  fi
  command -v prometheus >/dev/null && command -v promtool >/dev/null || billrun_apt_install prometheus
  rm -rf "$billrun_prom_dir"
  mkdir -p "$billrun_prom_dir"
  python3 tests/support/prometheus_usage.py fixtures/01-quickstart/usage >"$billrun_prom_dir/usage.om"
  promtool tsdb create-blocks-from openmetrics "$billrun_prom_dir/usage.om" "$billrun_prom_dir/data" >/dev/null
  printf 'global:\n  scrape_interval: 1h\nscrape_configs: []\n' >"$billrun_prom_dir/prometheus.yml"
  nohup prometheus --config.file="$billrun_prom_dir/prometheus.yml" --storage.tsdb.path="$billrun_prom_dir/data" \
    --storage.tsdb.retention.time=100y --web.listen-address="127.0.0.1:$BILLRUN_TEST_PROM_PORT" \
    >"$billrun_prom_dir/server.log" 2>&1 </dev/null &
  echo $! >"$BILLRUN_TEST_CACHE/prometheus.pid"
  echo "$billrun_prom_hash" >"$BILLRUN_TEST_CACHE/prometheus.hash"
  billrun_wait_http "$BILLRUN_TEST_PROM_URL/-/ready" "prometheus" 60
fi
echo "prometheus: $BILLRUN_TEST_PROM_URL" >&2
