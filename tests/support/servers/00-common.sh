# Helpers for the server scripts (sourced by scripts/test, before the others).
# Installs go to $BILLRUN_TEST_CACHE (default ~/.cache/billrun-test); servers this script family
# starts write their pid to $BILLRUN_TEST_CACHE/<name>.pid and are reused by later runs.
export BILLRUN_TEST_CACHE="${BILLRUN_TEST_CACHE:-$HOME/.cache/billrun-test}"
mkdir -p "$BILLRUN_TEST_CACHE"
# A name part safe for databases, buckets and schemas: lower case, digits, underscore.
BILLRUN_TEST_ID_SAFE="$(printf '%s' "$BILLRUN_TEST_RUN_ID" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '_')"
export BILLRUN_TEST_ID_SAFE

billrun_apt_install() { # package...
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  fi
}

billrun_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

billrun_http_ok() { # url -> exit 0 when it answers 2xx
  python3 - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
PY
}

billrun_wait_http() { # url what seconds
  local i
  for i in $(seq 1 $(( ${3:-60} * 5 ))); do
    billrun_http_ok "$1" && return 0
    sleep 0.2
  done
  echo "billrun test support: $2 did not answer at $1" >&2
  return 1
}

billrun_pid_alive() { # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

billrun_venv() { # name pip-args... ; prints the venv dir
  local dir="$BILLRUN_TEST_CACHE/venv-$1"
  shift
  if [ ! -f "$dir/.installed" ]; then
    rm -rf "$dir"
    if ! python3 -m venv "$dir" >/dev/null 2>&1; then
      billrun_apt_install python3-venv
      python3 -m venv "$dir"
    fi
    "$dir/bin/pip" install -q --disable-pip-version-check "$@" >&2
    touch "$dir/.installed"
  fi
  printf '%s' "$dir"
}
