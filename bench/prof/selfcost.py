#!/usr/bin/env python3
# selfcost.py FILE [N] [DIV] : self cost per function (and per crate), per DIV (default 6000)
import sys, re, collections
f=sys.argv[1]; N=int(sys.argv[2]) if len(sys.argv)>2 else 40; DIV=float(sys.argv[3]) if len(sys.argv)>3 else 6000
names={}; cur=None; self_=collections.Counter(); skip=False
def name(kind, rest):
    m=re.match(r'\((\d+)\)(?: (.*))?', rest)
    if m:
        if m.group(2): names[(kind,m.group(1))]=m.group(2)
        return names.get((kind,m.group(1)), rest)
    return rest
for line in open(f, errors='replace'):
    line=line.rstrip('\n')
    if line.startswith('fn='):
        cur=name('fn', line[3:]); continue
    if line.startswith(('cfn=','cfi=','cfl=','cob=')):
        if line.startswith('cfn='): name('fn', line[4:])
        continue
    if line.startswith('calls='):
        skip=True; continue
    if line and (line[0].isdigit() or line[0] in '+-*'):
        if skip: skip=False; continue
        parts=line.split()
        if len(parts)>=2 and cur: self_[cur]+=int(parts[1])
        continue
tot=sum(self_.values())
print(f"total {tot/DIV/1000:.1f} k per unit")
crate=collections.Counter()
for fn,c in self_.items():
    m=re.match(r'(?:<)?([a-z_0-9]+)::', fn)
    k=m.group(1) if m else ('malloc' if re.search(r'malloc|free|memalign|calloc|realloc|_int_|tcache|consolidate', fn) else ('mem' if fn.startswith(('__mem','mem')) else 'other:'+fn[:30]))
    crate[k]+=c
for k,c in crate.most_common(15): print(f"  {c/DIV:9.0f}  {k}")
print()
for fn,c in self_.most_common(N): print(f"{c/DIV:9.0f}  {fn[:150]}")
