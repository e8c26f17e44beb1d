#!/usr/bin/env bash
# Regenerates README's fault-matrix table (between the fault-matrix:begin/end markers in
# "Reliability") from a run of the fault matrix test (tests/it/fault_matrix.rs), which
# writes the table to target/fault-matrix.md when TSMIGRATE_FAULT_MATRIX_OUT names it.
#
#   scripts/fault-matrix.sh              run the matrix (about 2-3 minutes), then update README.md
#   scripts/fault-matrix.sh --from FILE  update README.md from a table a run already wrote
#
# The servers are the test suite's (scripts/services.sh); the matrix starts its own
# redis-server and PostgreSQL processes besides.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

table=target/fault-matrix.md
if [[ "${1:-}" == "--from" ]]; then
    table="${2:?--from needs a file}"
else
    mkdir -p target
    # A failing cell still writes the table: README shows what the run found.
    TSMIGRATE_FAULT_MATRIX_OUT="$PWD/$table" cargo test --locked --test it fault_matrix::fault_matrix -- --exact --nocapture || true
fi
[[ -s "$table" ]] || { echo "fault-matrix.sh: no table in $table" >&2; exit 1; }
grep -q '<!-- fault-matrix:begin -->' README.md && grep -q '<!-- fault-matrix:end -->' README.md || {
    echo "fault-matrix.sh: README.md lacks the fault-matrix:begin/end markers" >&2
    exit 1
}
awk -v table="$table" '
    /<!-- fault-matrix:begin -->/ { print; while ((getline line < table) > 0) print line; skipping = 1; next }
    /<!-- fault-matrix:end -->/ { skipping = 0 }
    !skipping { print }
' README.md >README.md.new
mv README.md.new README.md
echo "README.md: fault matrix table updated from $table"
