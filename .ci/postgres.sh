#!/usr/bin/env bash
# A real PostgreSQL for the tests that need one (tests/postgres/): Debian's package, one cluster,
# listening on 127.0.0.1 only, with a login role that may create the tests' databases.
#   bash .ci/postgres.sh start   installs (when missing) and starts it, prints the admin URL
#   bash .ci/postgres.sh stop    stops it
# The tests read the URL from PROPENSITY_TEST_POSTGRES_URL; .ci/run exports it.
set -euo pipefail
ROLE=propensity_test
PASSWORD=propensity_test
PORT=${PROPENSITY_TEST_POSTGRES_PORT:-5432}
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
AS_POSTGRES=$([ "$(id -u)" -eq 0 ] && echo "runuser -u postgres --" || echo "sudo -u postgres")

cluster() { pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1, $2}'; }

case "${1:-}" in
  start)
    if ! command -v pg_lsclusters >/dev/null || [ -z "$(cluster)" ]; then
      $SUDO apt-get update -qq
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >/dev/null
    fi
    read -r VERSION NAME <<<"$(cluster)"
    # Debian's postgresql.conf reads conf.d/; four tuning workers, an MLflow server and
    # Dagster's storage at once fit in max_connections with room to spare.
    printf "listen_addresses = '127.0.0.1'\nport = %s\nmax_connections = 200\n" "$PORT" |
      $SUDO tee "/etc/postgresql/$VERSION/$NAME/conf.d/propensity-tests.conf" >/dev/null
    $SUDO pg_ctlcluster "$VERSION" "$NAME" restart
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break; sleep 1; done
    $AS_POSTGRES psql -q -p "$PORT" -v ON_ERROR_STOP=1 <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END \$\$;
SQL
    echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/postgres"
    ;;
  stop)
    read -r VERSION NAME <<<"$(cluster)"
    $SUDO pg_ctlcluster "$VERSION" "$NAME" stop || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
