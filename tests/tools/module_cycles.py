#!/usr/bin/env python3
"""Fails when the crate's top-level modules import each other in a cycle.

The layers of CONTRIBUTING.md point one way (vocabulary, routes, config -> stages -> envelope,
proxy -> server, cli); a back edge means a type sits in the wrong module. This reads every
`crate::` path under src/ (after stripping comments and string literals), groups files by
their top-level module (src/x.rs and src/x/** are module `x`), and reports each strongly
connected component of more than one module, with one cycle through it.

Usage: module_cycles.py [SRC_DIR] [--graph]   (exit 1 on a cycle)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r'r#*"(?:.|\n)*?"#*|"(?:\\.|[^"\\])*"', re.S)
_CRATE_PATH = re.compile(r"\bcrate\s*::\s*(\{|[A-Za-z_][A-Za-z0-9_]*)")


def _strip(text: str) -> str:
    # Strings first would break on `"//"`, comments first on `"// in a string"`; a
    # single pass over both alternatives keeps whichever starts first.
    combined = re.compile(_STRING.pattern + "|" + _COMMENT.pattern, re.S)
    return combined.sub(" ", text)


def _brace_heads(text: str, start: int) -> set[str]:
    """The first path segment of each item in a `{...}` group starting at text[start]."""
    depth, i, item, heads = 0, start, "", set()
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            if depth == 1:
                item = ""
                i += 1
                continue
        elif c == "}":
            depth -= 1
            if depth == 0:
                head = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", item)
                if head:
                    heads.add(head.group(1))
                break
        if depth == 1 and c == ",":
            head = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", item)
            if head:
                heads.add(head.group(1))
            item = ""
        elif depth >= 1:
            item += c
        i += 1
    return heads


def module_of(src: Path, path: Path) -> str | None:
    rel = path.relative_to(src)
    if len(rel.parts) == 1:
        name = rel.stem
        return None if name in ("lib", "main") else name
    return rel.parts[0]


def graph(src: Path) -> dict[str, set[str]]:
    modules = {module_of(src, p) for p in src.rglob("*.rs")} - {None}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for path in sorted(src.rglob("*.rs")):
        owner = module_of(src, path)
        if owner is None:
            continue
        text = _strip(path.read_text(encoding="utf-8"))
        for m in _CRATE_PATH.finditer(text):
            heads = _brace_heads(text, m.start(1)) if m.group(1) == "{" else {m.group(1)}
            for head in heads:
                if head in modules and head != owner:
                    edges[owner].add(head)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first node repeated at the end) per strongly connected component > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            strong(v)

    found = []
    for comp in comps:
        members = set(comp)
        start = comp[0]
        # Breadth-first search back to `start` inside the component gives a shortest cycle.
        prev: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        end = None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & members):
                    if w == start:
                        end = v
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [start]
        v = end
        while v is not None and v != start:
            path.insert(1, v)
            v = prev.get(v)
        found.append(path + [start])
    return found


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    src = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "src"
    edges = graph(src)
    if "--graph" in argv:
        for m in sorted(edges):
            print(f"{m} -> {', '.join(sorted(edges[m])) or '(nothing)'}")
    found = cycles(edges)
    for cycle in found:
        print("module cycle: " + " -> ".join(cycle), file=sys.stderr)
    if found:
        return 1
    print(f"module graph: {len(edges)} top-level modules, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
