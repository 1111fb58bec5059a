#!/usr/bin/env bash
# The reliability suite in one command: faults (database outage and pause, service kill),
# a 20 s concurrency torture on both stores, hostile input, slow clients, property tests
# with 20,000 cases each, the authentication timing test, and schemathesis with 200
# examples per operation. CI runs the shorter versions through scripts/test.sh and
# scripts/schemathesis.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

TORTURE_SECS="${TORTURE_SECS:-20}" PROPTEST_CASES="${PROPTEST_CASES:-20000}" \
    ./scripts/test.sh -- torture:: hostile:: faults:: outage:: slow_clients:: fuzz:: \
    refusal_time --nocapture --test-threads 2
./scripts/schemathesis.sh "${SCHEMATHESIS_EXAMPLES:-200}"
