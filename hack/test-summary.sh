#!/usr/bin/env bash
# Filters `go test -v` output for humans and CI: the package results, every
# failure with its messages, and the "measured:" lines that tests and
# benchmarks print with their figures. The full log is kept in
# ${TOKENKEEPER_TEST_LOG:-/tmp/tokenkeeper-test.log}.
set -uo pipefail
log=${TOKENKEEPER_TEST_LOG:-/tmp/tokenkeeper-test.log}
: >"$log"
tee -a "$log" | grep --line-buffered -E '^(ok|FAIL|PASS$|panic:|--- FAIL|measured:)|^\s+--- FAIL|^\s+\S+_test\.go:[0-9]+:|^\s+(panic|goroutine)|(^|\s)measured:' || true
