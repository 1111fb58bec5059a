#!/usr/bin/env bash
# Runs schemathesis (from PyPI) against /openapi.json with the service on MongoDB (a fresh
# test database). The bar: no 5xx and no response outside the described schema.
# Usage: scripts/schemathesis.sh [EXAMPLES_PER_OPERATION]   (default 25)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
EXAMPLES="${1:-25}"

command -v schemathesis >/dev/null 2>&1 || python3 -m pip install -q schemathesis
command -v secantusd-rs >/dev/null 2>&1 || ./scripts/test.sh --no-run >/dev/null
cargo build --locked --bin conversation-sessions -q

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }

DB_DIR="$(mktemp -d -t schemathesis-db.XXXXXX)"
DB_PORT="$(free_port)"
APP_PORT="$(free_port)"
cleanup() { kill "${APP_PID:-}" "${DB_PID:-}" 2>/dev/null || true; rm -rf "$DB_DIR"; }
trap cleanup EXIT
secantusd-rs --host 127.0.0.1 --port "$DB_PORT" --storage-path "$DB_DIR" >/dev/null 2>&1 &
DB_PID=$!
wait_port "$DB_PORT"
# Started away from the checkout, whose .env (a developer's) would set it up too.
BIN="$PWD/target/debug/conversation-sessions"
(cd "$DB_DIR" && DB_URI="mongodb://127.0.0.1:$DB_PORT/?directConnection=true" DB_NAME=schemathesis \
    PORT="$APP_PORT" RUST_LOG=warn exec "$BIN") >/dev/null 2>&1 &
APP_PID=$!
wait_port "$APP_PORT"

# The checks of the bar. Authentication checks are left out: the service runs without
# API_KEYS here, and tests/integration/operations.rs covers authentication.
schemathesis run "http://127.0.0.1:$APP_PORT/openapi.json" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance \
    --max-examples "$EXAMPLES" --workers 2 --seed 1
