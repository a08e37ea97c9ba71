#!/usr/bin/env bash
# The admission micro-benchmark (benches/admission.rs): this tree against git revision REV.
#
#   bash bench/admission.sh REV [FILTER]     e.g. bash bench/admission.sh HEAD~1
#
# 1. REV's benchmark, built in a temporary git worktree (target directory
#    $CARGO_TARGET_DIR/bench-baseline/<commit>/, the one bench/run.sh --baseline uses, kept
#    for the next run), runs with `--save-baseline before`;
# 2. this tree's runs with `--baseline before`, so criterion prints each benchmark's change
#    against REV ("change: [low estimate high]" and "No change in performance detected",
#    "Performance has regressed" or "has improved").
# Both runs write to one criterion directory ($CARGO_TARGET_DIR/criterion, through
# CRITERION_HOME), and a benchmark is compared only when it has the same name in both
# revisions. FILTER (a criterion name filter) goes to both runs. The two runs are one after
# the other, not interleaved: on a shared machine, run the pair twice and trust what agrees.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
case "${1:-}" in
    ""|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2 ;;
esac
REV=$1
shift
COMMIT=$(git rev-parse --verify --quiet "$REV^{commit}") \
    || { echo "$REV: not a git revision" >&2; exit 2; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CRITERION_HOME=$CARGO_TARGET_DIR/criterion

WT=$(mktemp -d /tmp/sluice-admission.XXXXXX)
cleanup() {
    git -C "$ROOT" worktree remove --force "$WT/src" 2>/dev/null || true
    rm -rf "$WT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
git worktree add --detach --quiet "$WT/src" "$COMMIT"

echo "== $REV ($(git rev-parse --short "$COMMIT")): cargo bench --bench admission -- --save-baseline before"
(cd "$WT/src" && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/bench-baseline/$COMMIT \
    cargo bench --bench admission -- --save-baseline before "$@")
echo "== this tree ($(git rev-parse --short HEAD)): cargo bench --bench admission -- --baseline before"
cargo bench --bench admission -- --baseline before "$@"
