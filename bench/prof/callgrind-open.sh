#!/usr/bin/env bash
# bench/prof/callgrind-open.sh OUT [COUNT] : sluice under callgrind (RUST_LOG=info),
# 300 warm-up connects, then `wsbench idle` with COUNT sessions (default 3,000, 50 at
# once, one echo each): OUT.1 holds the connect phase (dumped when the last session is
# open), OUT.2 the close phase. Instruction counts are repeatable on this noisy machine;
# read them per session with
#   python3 bench/prof/selfcost.py OUT.1 40 COUNT      (self cost by function and crate)
#   python3 bench/prof/calls.py OUT.1 callees '^sluice::upstream::request::build_request$' COUNT
#   callgrind_annotate --inclusive=yes OUT.1
set -u
. "$(dirname "$0")/common.sh"
OUT=$1; COUNT=${2:-3000}
WRAP="valgrind --tool=callgrind --callgrind-out-file=$OUT --dump-instr=no"
start_target sluice 17410 /tmp/sluice-prof-callgrind
"$W" handshakes --url $URL --count 300 --concurrency 50 --fills 1 --max-secs 30 --settle-secs 0.5 >/dev/null 2>&1
callgrind_control -z $SP >/dev/null
"$W" idle --url $URL --conns $COUNT --concurrency 50 --warm 0 --hold-secs 4 --settle-secs 1 --after-secs 2 2>&1 >/dev/null | while read -r l; do
  case "$l" in
    *all-open*) callgrind_control -d $SP >/dev/null;;
    *all-closed*) sleep 1.5; callgrind_control -d $SP >/dev/null;;
  esac
done
sleep 1; stop_target
ls -t $OUT.* | head -2
