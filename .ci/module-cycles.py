#!/usr/bin/env python3
"""Reads the module graph that `cargo modules dependencies` prints (DOT, "uses" edges)
on standard input and lists every import circle: a set of modules each of which imports,
through the others, one that imports it back. Exits 1 when there is one.

    cargo modules dependencies --lib --no-externs --no-sysroot --no-fns --no-types \
        --no-traits --no-owns | python3 .ci/module-cycles.py
"""
import re
import sys

imports = {}
for line in sys.stdin:
    edge = re.match(r'\s*"([^"]+)" -> "([^"]+)" \[label="uses"', line)
    if edge:
        imports.setdefault(edge[1], set()).add(edge[2])
        imports.setdefault(edge[2], set())

# Tarjan's strongly connected components, without recursion.
index, low, on_stack, stack, circles = {}, {}, set(), [], []
for root in imports:
    if root in index:
        continue
    work = [(root, iter(sorted(imports[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
        module, targets = work[-1]
        target = next(targets, None)
        if target is None:
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                circle = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    circle.append(member)
                    if member == module:
                        break
                if len(circle) > 1 or module in imports[module]:
                    circles.append(sorted(circle))
        elif target not in index:
            index[target] = low[target] = len(index)
            stack.append(target)
            on_stack.add(target)
            work.append((target, iter(sorted(imports[target]))))
        elif target in on_stack:
            low[module] = min(low[module], index[target])

for circle in circles:
    print("import circle:", " <-> ".join(circle))
edges = sum(len(targets) for targets in imports.values())
print(f"{len(imports)} modules, {edges} imports, {len(circles)} import circles")
sys.exit(1 if circles else 0)
