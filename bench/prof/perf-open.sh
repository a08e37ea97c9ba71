#!/usr/bin/env bash
# bench/prof/perf-open.sh sluice|nginx : perf record -e cpu-clock -g over the connect
# phase only: `wsbench idle` opens 9,000 sessions (200 at once, one echo each) and perf
# stops when the last one is open. Then e.g.
#   perf report -i /tmp/sluice-prof-open-sluice/perf.data --no-children --sort dso -n
#   perf report -i ... --children --sort sym -g none | grep __x64_sys_
# (software cpu-clock events: hardware counters are not available on these machines).
set -u
. "$(dirname "$0")/common.sh"
T=/tmp/sluice-prof-open-$1
start_target "$1" 17340 $T
"$W" handshakes --url $URL --count 2000 --concurrency 200 --fills 1 --max-secs 10 --settle-secs 0.5 >/dev/null 2>&1
perf record -e cpu-clock -F 5000 -g -o $T/perf.data -p $PIDS 2>/dev/null & PP=$!; sleep 0.5
"$W" idle --url $URL --conns 9000 --warm 0 --hold-secs 1 --settle-secs 0.5 2>&1 >/dev/null | while read -r l; do
  case "$l" in *all-open*) kill -INT $PP; echo "$1: $l";; esac
done
wait $PP 2>/dev/null; stop_target
echo $T/perf.data
