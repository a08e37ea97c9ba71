#!/usr/bin/env python3
# callees.py FILE PATTERN [DIV]: for functions matching PATTERN: self cost and inclusive cost of each callee
import sys, re, collections
f=sys.argv[1]; pat=re.compile(sys.argv[2]); DIV=float(sys.argv[3]) if len(sys.argv)>3 else 3000
names={}; cur=None; callee=None; pending=False; cost=collections.Counter(); selfc=0; calls=collections.Counter()
def name(rest):
    m=re.match(r'\((\d+)\)(?: (.*))?', rest)
    if m:
        if m.group(2): names[m.group(1)]=m.group(2)
        return names.get(m.group(1), rest)
    return rest
n=0
for line in open(f, errors='replace'):
    line=line.rstrip('\n')
    if line.startswith('fn='): cur=name(line[3:]); continue
    if line.startswith('cfn='): callee=name(line[4:]); continue
    if line.startswith(('cfi=','cfl=','cob=','fi=','fe=','fl=','ob=')): continue
    if line.startswith('calls='): pending=True; n=int(line[6:].split()[0]); continue
    if line and (line[0].isdigit() or line[0] in '+-*'):
        parts=line.split()
        if cur and pat.search(cur):
            if pending: cost[callee]+=int(parts[1]); calls[callee]+=n
            else: selfc+=int(parts[1])
        pending=False
print(f"self {selfc/DIV:8.0f}")
for k,v in cost.most_common(25): print(f"{v/DIV:8.0f} {calls[k]/DIV:6.2f}x {k[:150]}")
