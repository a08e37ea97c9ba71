#!/usr/bin/env python3
"""The import graph of src/ must have no cycle and follow the layers of src/lib.rs.

Reads the item graph that `cargo modules dependencies --lib` (the cargo-modules crate)
prints as Graphviz, folds every item into its top-level module (`sluice::proxy::hold::
serve` into `proxy`), and fails when the module graph has a cycle or a module uses one
of a higher layer. Usage: cargo modules dependencies --lib | python3 .ci/layers.py
"""
import re
import sys

# Lowest first; a module may use its own layer and those below. Keep in step with the
# "Layout" section of src/lib.rs.
LAYERS = [
    ("leaves", {"config", "reject", "logging", "stream", "parse", "tls", "stats", "sip"}),
    ("metrics", {"metrics"}),
    ("mechanisms", {"admission", "upstream", "relay", "ws", "control", "auth", "tenant",
                    "protect", "cluster", "calls"}),
    ("state", {"runtime", "tenants", "release"}),
    ("flow", {"proxy"}),
    ("wiring", {"server", "admin", "reload", "signals", "(root)"}),
    ("entry", {"cli", "tools", "plan"}),
]
LAYER = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}

node = re.compile(r'^\s*"(sluice(?:::[^"]*)?)" \[label="([^|"]*)\|')
edge = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[label="uses"')

modules, edges = set(), set()
text = sys.stdin.read()
for line in text.splitlines():
    m = node.match(line)
    if m and m.group(2).split()[-1] in ("mod", "crate"):
        modules.add(m.group(1))
if "sluice" not in modules:
    sys.exit("layers.py: no module graph of sluice on stdin (did cargo-modules run?)")


def top(path):
    """The top-level module an item of sluice lives in, `(root)` for lib.rs itself."""
    if not path.startswith("sluice::"):
        return None
    parts = path.split("::")
    # Impl items of foreign types show up under a made-up module (`sluice::boxed`):
    # anything that is not a module path of ours is lib.rs's own.
    return parts[1] if "sluice::" + parts[1] in modules else "(root)"


for line in text.splitlines():
    m = edge.match(line)
    if not m:
        continue
    a, b = top(m.group(1)), top(m.group(2))
    if a and b and a != b:
        edges.add((a, b))

problems = []
for a, b in sorted(edges):
    if a not in LAYER or b not in LAYER:
        problems.append(f"{a} -> {b}: a module missing from the layer table in .ci/layers.py")
    elif LAYER[a] < LAYER[b]:
        problems.append(
            f"{a} ({LAYERS[LAYER[a]][0]}) uses {b} ({LAYERS[LAYER[b]][0]}): a lower layer may not use a higher one")

# Cycles, by depth-first search over the module graph.
graph = {}
for a, b in edges:
    graph.setdefault(a, set()).add(b)
state, stack = {}, []


def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
        if state.get(m) == 1:
            cycle = stack[stack.index(m):] + [m]
            problems.append("cycle: " + " -> ".join(cycle))
        elif m not in state:
            visit(m)
    stack.pop()
    state[n] = 2


for n in sorted(graph):
    if n not in state:
        visit(n)

if problems:
    print("src/ import graph:", *problems, sep="\n  ")
    sys.exit(1)
print(f"src/ import graph: {len({m for e in edges for m in e})} top-level modules, "
      f"{len(edges)} edges, no cycle, every edge down or within its layer")
