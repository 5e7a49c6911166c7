# PostgreSQL for the connector tests. Uses a server already answering on 127.0.0.1:5432 with
# trust auth for `postgres` (this kind of machine runs one), else a throwaway cluster of the
# Debian package (installed if missing) on 127.0.0.1:55432 in /tmp/billrun-test-pg (the
# postgres user cannot enter /root), reused by later runs. BILLRUN_TEST_PG_THROWAWAY=1 skips 5432. Creates one database per run and exports:
#   BILLRUN_TEST_PG_HOST, BILLRUN_TEST_PG_PORT, BILLRUN_TEST_PG_USER, BILLRUN_TEST_PG_DB
billrun_pg_psql() { # port sql
  psql -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc "$2"
}
billrun_pg_start() {
  if [ "${BILLRUN_TEST_PG_THROWAWAY:-0}" != 1 ] && command -v psql >/dev/null && billrun_pg_psql 5432 'select 1' >/dev/null 2>&1; then
    BILLRUN_TEST_PG_PORT=5432
    return
  fi
  local port=55432 dir=/tmp/billrun-test-pg
  if command -v psql >/dev/null && billrun_pg_psql "$port" 'select 1' >/dev/null 2>&1; then
    BILLRUN_TEST_PG_PORT=$port
    return
  fi
  if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || ! command -v psql >/dev/null; then
    billrun_apt_install postgresql
  fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  rm -rf "$dir"
  mkdir -p "$dir"
  chown postgres:postgres "$dir"
  runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null
  BILLRUN_TEST_PG_PORT=$port
}
billrun_pg_start
export BILLRUN_TEST_PG_HOST=127.0.0.1 BILLRUN_TEST_PG_PORT BILLRUN_TEST_PG_USER=postgres
export BILLRUN_TEST_PG_DB="billrun_test_${BILLRUN_TEST_ID_SAFE}"
if [ "$(billrun_pg_psql "$BILLRUN_TEST_PG_PORT" "select count(*) from pg_database where datname = '$BILLRUN_TEST_PG_DB'")" = 0 ]; then
  billrun_pg_psql "$BILLRUN_TEST_PG_PORT" "create database \"$BILLRUN_TEST_PG_DB\"" >/dev/null
fi
echo "postgres: 127.0.0.1:$BILLRUN_TEST_PG_PORT database $BILLRUN_TEST_PG_DB" >&2
