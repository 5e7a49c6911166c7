# A Snowflake emulator: fakesnow's server (PyPI, venv in $BILLRUN_TEST_CACHE) behind billrun's own
# JSON shim (tests/support/snowflake/fakesnow_json.py: Arrow rowsets → Snowflake JSON rowsets,
# login checks) on 127.0.0.1:$BILLRUN_TEST_SF_PORT (default 45911). Reused when the running shim
# is this version of the file, restarted otherwise. Logins need the user and password below, or
# the RSA key pair generated once in $BILLRUN_TEST_CACHE (key-pair auth). Exports:
#   BILLRUN_TEST_SF_URL, BILLRUN_TEST_SF_ACCOUNT, BILLRUN_TEST_SF_USER, BILLRUN_TEST_SF_PASSWORD,
#   BILLRUN_TEST_SF_PRIVATE_KEY_FILE, BILLRUN_TEST_SF_DATABASE (unique per run; each test makes
#   its own schema in it), BILLRUN_TEST_SF_PYTHON (the venv's python, for test setup)
BILLRUN_TEST_SF_PORT="${BILLRUN_TEST_SF_PORT:-45911}"
export BILLRUN_TEST_SF_URL="http://127.0.0.1:$BILLRUN_TEST_SF_PORT"
export BILLRUN_TEST_SF_ACCOUNT=billrun_test BILLRUN_TEST_SF_USER=billrun BILLRUN_TEST_SF_PASSWORD=billrun-test-password
billrun_sf_shim="$(pwd)/tests/support/snowflake/fakesnow_json.py"
billrun_sf_key="$BILLRUN_TEST_CACHE/snowflake-rsa"
if [ ! -f "$billrun_sf_key.p8" ] || [ ! -f "$billrun_sf_key.pub" ]; then
  command -v openssl >/dev/null || billrun_apt_install openssl
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$billrun_sf_key.p8" 2>/dev/null
  openssl pkey -in "$billrun_sf_key.p8" -pubout -out "$billrun_sf_key.pub" 2>/dev/null
fi
export BILLRUN_TEST_SF_PRIVATE_KEY_FILE="$billrun_sf_key.p8"
billrun_sf_version="$(sha256sum "$billrun_sf_shim" | cut -d' ' -f1)"
if ! python3 - "$BILLRUN_TEST_SF_URL/billrun-shim/health" "$billrun_sf_version" <<'PY' >/dev/null 2>&1
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))
sys.exit(0 if doc.get("version") == sys.argv[2] else 1)
PY
then
  if billrun_pid_alive "$BILLRUN_TEST_CACHE/snowflake.pid"; then
    kill "$(cat "$BILLRUN_TEST_CACHE/snowflake.pid")" 2>/dev/null || true
    sleep 0.5
  fi
  billrun_sf_venv="$(billrun_venv fakesnow 'fakesnow[server]==0.12.*' 'snowflake-connector-python<5')"
  nohup "$billrun_sf_venv/bin/python" "$billrun_sf_shim" --port "$BILLRUN_TEST_SF_PORT" \
    --user "$BILLRUN_TEST_SF_USER" --password "$BILLRUN_TEST_SF_PASSWORD" --public-key "$billrun_sf_key.pub" \
    >"$BILLRUN_TEST_CACHE/snowflake.log" 2>&1 </dev/null &
  echo $! >"$BILLRUN_TEST_CACHE/snowflake.pid"
  billrun_wait_http "$BILLRUN_TEST_SF_URL/billrun-shim/health" "fakesnow + JSON shim (Snowflake)" 60
fi
export BILLRUN_TEST_SF_DATABASE="BILLRUN_TEST_${BILLRUN_TEST_ID_SAFE}"
# the tests load their tables with the Python connector of the same venv (tests/support/snowflake/sf_exec.py)
export BILLRUN_TEST_SF_PYTHON="$BILLRUN_TEST_CACHE/venv-fakesnow/bin/python"
echo "snowflake: $BILLRUN_TEST_SF_URL (fakesnow + shim) database $BILLRUN_TEST_SF_DATABASE" >&2
