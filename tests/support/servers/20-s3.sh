# An S3-compatible server (moto's server, PyPI, in a venv under $BILLRUN_TEST_CACHE) on
# 127.0.0.1:$BILLRUN_TEST_S3_PORT (default 45900), reused when already running. Creates one
# bucket per run and exports:
#   BILLRUN_TEST_S3_ENDPOINT, BILLRUN_TEST_S3_BUCKET, BILLRUN_TEST_S3_KEY_ID, BILLRUN_TEST_S3_SECRET
BILLRUN_TEST_S3_PORT="${BILLRUN_TEST_S3_PORT:-45900}"
export BILLRUN_TEST_S3_ENDPOINT="http://127.0.0.1:$BILLRUN_TEST_S3_PORT"
if ! billrun_http_ok "$BILLRUN_TEST_S3_ENDPOINT/moto-api/"; then
  billrun_moto_venv="$(billrun_venv moto 'moto[server]==5.*')"
  nohup "$billrun_moto_venv/bin/moto_server" -H 127.0.0.1 -p "$BILLRUN_TEST_S3_PORT" \
    >"$BILLRUN_TEST_CACHE/moto.log" 2>&1 </dev/null &
  echo $! >"$BILLRUN_TEST_CACHE/moto.pid"
  billrun_wait_http "$BILLRUN_TEST_S3_ENDPOINT/moto-api/" "moto (S3)" 60
fi
export BILLRUN_TEST_S3_BUCKET="billrun-test-$(printf '%s' "$BILLRUN_TEST_ID_SAFE" | tr '_' '-')"
export BILLRUN_TEST_S3_KEY_ID=test BILLRUN_TEST_S3_SECRET=test
python3 - "$BILLRUN_TEST_S3_ENDPOINT/$BILLRUN_TEST_S3_BUCKET" <<'PY'
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="PUT"), timeout=10).read()
PY
echo "s3: $BILLRUN_TEST_S3_ENDPOINT bucket $BILLRUN_TEST_S3_BUCKET" >&2
