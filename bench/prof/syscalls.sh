#!/usr/bin/env bash
# bench/prof/syscalls.sh sluice|nginx : system calls per session, by name, in the
# connect phase and over connect + close (strace -f of one fill of 2,000 sessions,
# 200 in flight; the connect phase is everything before the first close or shutdown).
# strace slows the target, so only the counts mean anything, not the times.
set -u
. "$(dirname "$0")/common.sh"
T=/tmp/sluice-prof-syscalls-$1
start_target "$1" 17320 $T
"$W" handshakes --url $URL --count 500 --concurrency 100 --fills 1 --max-secs 10 --settle-secs 0.2 >/dev/null 2>&1
strace -f -o $T/st.txt $(echo $PIDS | tr , '\n' | sed 's/^/-p /') 2>/dev/null & STP=$!; sleep 1
"$W" handshakes --url $URL --count 2000 --concurrency 200 --fills 1 --max-secs 20 --settle-secs 0.5 >/dev/null 2>&1
sleep 0.5; kill -INT $STP; wait $STP; stop_target
python3 - $T/st.txt <<'PY'
import sys, re, collections
connect, whole = collections.Counter(), collections.Counter(); closing = False
for l in open(sys.argv[1]):
    m = re.match(r'\d+\s+(?:<\.\.\. )?(\w+)', l)
    if not m or ('<...' in l and 'resumed' in l):
        continue
    s = m.group(1)
    if s in ('close', 'shutdown'):
        closing = True
    whole[s] += 1
    if not closing:
        connect[s] += 1
print(f"{'per session':16s} {'connect':>8s} {'connect+close':>14s}")
for k, v in whole.most_common():
    print(f"{k:16s} {connect[k]/2000:8.2f} {v/2000:14.2f}")
print(f"{'total':16s} {sum(connect.values())/2000:8.2f} {sum(whole.values())/2000:14.2f}")
PY
