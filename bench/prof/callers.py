#!/usr/bin/env python3
# callers.py FILE PATTERN [DIV]: inclusive cost of calls into functions matching PATTERN, by caller
import sys, re, collections
f=sys.argv[1]; pat=re.compile(sys.argv[2]); DIV=float(sys.argv[3]) if len(sys.argv)>3 else 6000
names={}; cur=None; callee=None; pending=False; cost=collections.Counter(); cnt=collections.Counter()
def name(rest):
    m=re.match(r'\((\d+)\)(?: (.*))?', rest)
    if m:
        if m.group(2): names[m.group(1)]=m.group(2)
        return names.get(m.group(1), rest)
    return rest
ncalls=0
for line in open(f, errors='replace'):
    line=line.rstrip('\n')
    if line.startswith('fn='): cur=name(line[3:]); continue
    if line.startswith('cfn='): callee=name(line[4:]); continue
    if line.startswith('calls='): pending=True; ncalls=int(line[6:].split()[0]); continue
    if pending:
        pending=False
        if callee and pat.search(callee):
            parts=line.split(); cost[(cur,callee)]+=int(parts[1]); cnt[(cur,callee)]+=ncalls
for (c,e),v in cost.most_common(25): print(f"{v/DIV:8.0f} {cnt[(c,e)]/DIV:6.2f}x  {c[:90]}  -> {e[:40]}")
