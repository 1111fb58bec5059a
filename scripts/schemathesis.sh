#!/usr/bin/env bash
# Runs schemathesis (from PyPI) against /openapi.json with the service on MongoDB (a fresh
# test database). The bar: no 5xx and no response outside the described schema.
# Usage: scripts/schemathesis.sh [EXAMPLES_PER_OPERATION]   (default 25)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
EXAMPLES="${1:-25}"

# One version, so that its checks and flags stay those this script names. It goes into a
# virtual environment under target/: a Debian system Python refuses `pip install` outside
# one (PEP 668), and the machine's own packages stay as they are.
SCHEMATHESIS_VERSION="4.32.5"
if schemathesis --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
    SCHEMATHESIS=schemathesis
else
    VENV="target/tools/schemathesis-$SCHEMATHESIS_VERSION"
    if [ ! -x "$VENV/bin/schemathesis" ]; then
        echo "==> installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            # Debian ships venv apart from Python itself.
            rm -rf "$VENV"
            as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
            as_root apt-get update -qq
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$VENV"
        fi
        "$VENV/bin/python" -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    SCHEMATHESIS="$PWD/$VENV/bin/schemathesis"
fi
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
# One worker: with two, schemathesis failed in its coverage phase on this machine's Python
# 3.11 with "SystemError: AST constructor recursion depth mismatch" (CPython issue 106905)
# once the path parameters declared a pattern. One worker also finished sooner here (20-23 s
# against 42 s), since the service and its database share the machine's two cores.
"$SCHEMATHESIS" run "http://127.0.0.1:$APP_PORT/openapi.json" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance \
    --max-examples "$EXAMPLES" --workers 1 --seed 1
