#!/usr/bin/env python3
# bench/prof/calls.py FILE callees|callers PATTERN [DIV] : from a callgrind file, per
# unit (DIV, default 3,000 sessions):
#   callees: for the functions matching PATTERN, their self cost and the inclusive cost
#            and calls of each function they call;
#   callers: the inclusive cost and calls of every call into a function matching
#            PATTERN, by caller.
import sys, re, collections
f, mode, pat = sys.argv[1], sys.argv[2], re.compile(sys.argv[3])
DIV = float(sys.argv[4]) if len(sys.argv) > 4 else 3000
if mode not in ('callees', 'callers'):
    sys.exit('mode: callees or callers')
names = {}
def name(rest):
    # callgrind compresses names: "(id) name" the first time, "(id)" after.
    m = re.match(r'\((\d+)\)(?: (.*))?', rest)
    if m:
        if m.group(2): names[m.group(1)] = m.group(2)
        return names.get(m.group(1), rest)
    return rest
cur = callee = None; pending = False; n = 0; selfc = 0
cost, calls = collections.Counter(), collections.Counter()
for line in open(f, errors='replace'):
    line = line.rstrip('\n')
    if line.startswith('fn='): cur = name(line[3:]); continue
    if line.startswith('cfn='): callee = name(line[4:]); continue
    if line.startswith(('cfi=', 'cfl=', 'cob=', 'fi=', 'fe=', 'fl=', 'ob=')): continue
    if line.startswith('calls='): pending = True; n = int(line[6:].split()[0]); continue
    if line and (line[0].isdigit() or line[0] in '+-*'):
        parts = line.split()
        if len(parts) >= 2 and cur:
            if mode == 'callees' and pat.search(cur):
                if pending: cost[callee] += int(parts[1]); calls[callee] += n
                else: selfc += int(parts[1])
            elif mode == 'callers' and pending and callee and pat.search(callee):
                cost[(cur, callee)] += int(parts[1]); calls[(cur, callee)] += n
        pending = False
if mode == 'callees':
    print(f"self {selfc/DIV:8.0f}")
    for k, v in cost.most_common(25): print(f"{v/DIV:8.0f} {calls[k]/DIV:6.2f}x {k[:150]}")
else:
    for (c, e), v in cost.most_common(25): print(f"{v/DIV:8.0f} {calls[(c, e)]/DIV:6.2f}x  {c[:90]}  -> {e[:40]}")
