#!/usr/bin/env bash
# Makes sure a local PostgreSQL and Redis are running for the demo and the tests.
#
#   scripts/services.sh
#
# Idempotent and quick when both are up. For each service:
#   running         -> nothing to do
#   installed only  -> start it (PostgreSQL with pg_ctlcluster, Redis with redis-server --daemonize)
#   not installed   -> apt-get install it (Debian/Ubuntu; as root, or through sudo), then start it
# then waits (up to 60 s) until `pg_isready` and `redis-cli ping` answer, and prints one line each.
#
# PostgreSQL must accept the role `postgres` over TCP at 127.0.0.1 without a password (the
# tests and the demo connect as postgres://postgres@127.0.0.1:5432). A fresh Debian install
# asks for a password (scram-sha-256) on TCP; for a cluster this script manages it then adds
#     host all all 127.0.0.1/32 trust
#     host all all ::1/128 trust
# at the top of pg_hba.conf and reloads. That is meant for a local development/test server
# only: never run this script against a server that holds real data.
#
# Knobs (rarely needed): PG_PORT (5432), PG_CLUSTER (main), REDIS_PORT (6379),
# TSMIGRATE_SKIP_SERVICES=1 (do nothing: you manage the servers yourself).
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT="${PG_PORT:-5432}"
PG_CLUSTER="${PG_CLUSTER:-main}"
REDIS_HOST=127.0.0.1
REDIS_PORT="${REDIS_PORT:-6379}"
WAIT_SECONDS=60

if [[ "${TSMIGRATE_SKIP_SERVICES:-}" == "1" ]]; then
    echo "services: skipped (TSMIGRATE_SKIP_SERVICES=1)"
    exit 0
fi

die() {
    echo "services.sh: error: $*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pg_ready() { have pg_isready && pg_isready -h "$PG_HOST" -p "$PG_PORT" -q; }
redis_ready() { have redis-cli && [[ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]; }

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | head -1; }
pg_server_installed() { have pg_ctlcluster && compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; }

# --- what is there -----------------------------------------------------------------------
packages=()
pg_state="already running"
redis_state="already running"

if ! pg_ready; then
    if port_open "$PG_HOST" "$PG_PORT"; then
        # Something listens but we cannot ask it: the client tools are missing.
        have pg_isready || packages+=(postgresql-client)
    elif pg_server_installed; then
        pg_state="started"
    else
        packages+=(postgresql)
        pg_state="installed and started"
    fi
fi
have psql || [[ " ${packages[*]-} " == *" postgresql"* ]] || packages+=(postgresql-client)

if ! redis_ready; then
    if port_open "$REDIS_HOST" "$REDIS_PORT"; then
        have redis-cli || packages+=(redis-tools)
    elif have redis-server; then
        redis_state="started"
    else
        packages+=(redis-server)
        redis_state="installed and started"
    fi
fi

# --- install -------------------------------------------------------------------------------
if ((${#packages[@]})); then
    have apt-get || die "PostgreSQL/Redis are missing (${packages[*]}) and this is not a Debian/Ubuntu system; install them yourself, or set TSMIGRATE_SKIP_SERVICES=1 and point TSMIGRATE_TEST_DATABASE_URL / TSMIGRATE_TEST_REDIS_URL at running servers"
    echo "services: installing ${packages[*]} (apt-get)"
    apt_log="$(mktemp "${TMPDIR:-/tmp}/tsmigrate-apt.XXXXXX")"
    { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"; } >"$apt_log" 2>&1 \
        || { cat "$apt_log" >&2; die "apt-get install ${packages[*]} failed (output above)"; }
    rm -f "$apt_log"
fi

# --- start ---------------------------------------------------------------------------------
if ! pg_ready && ! port_open "$PG_HOST" "$PG_PORT"; then
    version="$(pg_version)"
    if [[ -z "$version" || ! -d "/etc/postgresql/$version/$PG_CLUSTER" ]]; then
        # The server package is installed but no cluster exists (or it was removed).
        version="${version:-$(ls /usr/lib/postgresql | sort -V | tail -1)}"
        echo "services: creating PostgreSQL cluster $version/$PG_CLUSTER"
        as_root pg_createcluster "$version" "$PG_CLUSTER" --port "$PG_PORT" >/dev/null
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start \
        || die "cannot start PostgreSQL cluster $version/$PG_CLUSTER; see /var/log/postgresql/postgresql-$version-$PG_CLUSTER.log"
fi

if ! redis_ready && ! port_open "$REDIS_HOST" "$REDIS_PORT"; then
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --logfile "${TMPDIR:-/tmp}/tsmigrate-redis-$REDIS_PORT.log" >/dev/null \
        || die "cannot start redis-server; see ${TMPDIR:-/tmp}/tsmigrate-redis-$REDIS_PORT.log"
fi

# --- wait ----------------------------------------------------------------------------------
wait_for() {
    local what="$1" check="$2" deadline=$((SECONDS + WAIT_SECONDS))
    until "$check"; do
        if ((SECONDS >= deadline)); then
            die "$what is not ready after ${WAIT_SECONDS}s"
        fi
        sleep 0.5
    done
}
wait_for "PostgreSQL at $PG_HOST:$PG_PORT (pg_isready)" pg_ready
wait_for "Redis at $REDIS_HOST:$REDIS_PORT (redis-cli ping)" redis_ready

# --- PostgreSQL: the postgres role over TCP without a password ------------------------------
pg_query() { PGPASSWORD="" psql -w -X -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc "$1" 2>&1; }

if ! pg_query "SELECT 1" >/dev/null; then
    version="$(pg_version)"
    hba="/etc/postgresql/$version/$PG_CLUSTER/pg_hba.conf"
    if [[ -n "$version" && -f "$hba" ]] && ! grep -q "^host all all 127.0.0.1/32 trust" "$hba"; then
        echo "services: allowing password-less TCP connections from localhost in $hba (local dev/test server)"
        tmp="$(mktemp)"
        {
            echo "# Added by tsmigrate scripts/services.sh for local development and tests only."
            echo "host all all 127.0.0.1/32 trust"
            echo "host all all ::1/128 trust"
            cat "$hba"
        } >"$tmp"
        as_root cp "$tmp" "$hba"
        rm -f "$tmp"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" reload
        for _ in $(seq 20); do
            pg_query "SELECT 1" >/dev/null && break
            sleep 0.5
        done
    fi
    error="$(pg_query "SELECT 1")" \
        || die "PostgreSQL is running but role postgres cannot connect over TCP at $PG_HOST:$PG_PORT without a password: $error
  next: allow it in pg_hba.conf (host all all 127.0.0.1/32 trust), or set TSMIGRATE_TEST_DATABASE_URL / DATABASE_URL with a password"
fi

pg_server="$(pg_query "SHOW server_version" | cut -d' ' -f1)"
redis_server="$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p')"
echo "postgresql: ready at $PG_HOST:$PG_PORT (PostgreSQL $pg_server, $pg_state)"
echo "redis:      ready at $REDIS_HOST:$REDIS_PORT (Redis $redis_server, $redis_state)"
