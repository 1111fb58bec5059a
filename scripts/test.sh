#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (the
# MongoDB-wire test server secantusd-rs and docker-compose), starts the test server on a
# free port with a temporary data directory, runs every test against it, and stops it.
#
# The MongoDB tests never skip: if the server cannot be installed or started, this fails.
# Extra arguments go to `cargo test` (for example a test-name filter).
set -euo pipefail

SECANTUS_VERSION="0.5.3-beta.196"
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_test_server() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if command -v secantusd-rs >/dev/null 2>&1; then
        return
    fi
    log "installing the MongoDB-wire test server secantus-mdb $SECANTUS_VERSION (about 5 minutes, once per machine)"
    command -v cmake >/dev/null 2>&1 || apt_install cmake
    cargo install secantus-mdb --version "$SECANTUS_VERSION" --locked --ignore-rust-version
    command -v secantusd-rs >/dev/null 2>&1 || { log "secantusd-rs is still missing after install"; exit 1; }
}

ensure_compose() {
    command -v docker-compose >/dev/null 2>&1 && return
    log "installing docker-compose (used to validate docker-compose.yml)"
    apt_install docker-compose
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_test_server() {
    DB_DIR="$(mktemp -d -t conversation-test-db.XXXXXX)"
    DB_PORT="$(free_port)"
    secantusd-rs --host 127.0.0.1 --port "$DB_PORT" --storage-path "$DB_DIR" \
        >"$DB_DIR.log" 2>&1 &
    DB_PID=$!
    trap stop_test_server EXIT
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$DB_PORT") 2>/dev/null; then
            log "test server secantusd-rs listening on 127.0.0.1:$DB_PORT (pid $DB_PID)"
            export TEST_MONGO_URI="mongodb://127.0.0.1:$DB_PORT/?directConnection=true"
            return
        fi
        if ! kill -0 "$DB_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    log "the test server did not start; its log:"
    cat "$DB_DIR.log" >&2
    exit 1
}

stop_test_server() {
    if [ -n "${DB_PID:-}" ]; then
        kill "$DB_PID" 2>/dev/null || true
        wait "$DB_PID" 2>/dev/null || true
    fi
    rm -rf "${DB_DIR:-}" "${DB_DIR:-}.log"
}

ensure_test_server
ensure_compose
start_test_server

OUT="$(mktemp -t conversation-test-output.XXXXXX)"
set +e
cargo test --locked "$@" 2>&1 | tee "$OUT"
status=${PIPESTATUS[0]}
set -e

mongo_passed=$(grep -cE '^test .*::mongo::.* \.\.\. ok$' "$OUT" || true)
mongo_failed=$(grep -cE '^test .*::mongo::.* \.\.\. FAILED$' "$OUT" || true)
total_passed=$(grep -cE '^test .* \.\.\. ok$' "$OUT" || true)
total_failed=$(grep -cE '^test .* \.\.\. FAILED$' "$OUT" || true)
rm -f "$OUT"
log "MongoDB tests (against secantusd-rs): $mongo_passed passed, $mongo_failed failed"
echo "all tests: $total_passed passed, $total_failed failed"
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ] && [ "$mongo_passed" -eq 0 ]; then
    log "no MongoDB test ran: failing"
    exit 1
fi
exit "$status"
