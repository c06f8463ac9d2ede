#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

Dependencies between ferry's modules must point one way (docs/architecture.md). This reads each
crate's sources, maps every file to its module path (`a/mod.rs` and `a.rs` are `a`, `a/b.rs` is
`a::b`), and draws an edge from a module to every module it names: `use` trees (braces expanded),
paths in code that start with `crate::`, `super::`, `self::`, a child module's name, or a name a
`use` brought in. A path ends at the deepest module it names, so `crate::run::control::ADMIN_CONF`
is an edge to `run::control`; re-exports count, because a `pub use` in `a` of `a::b`'s item makes
`a` depend on `a::b`. Inline modules (`mod tests { … }`) are left out: test code may look anywhere.
Comments, strings and `mod x;` lines are not edges.

    scripts/check-module-cycles.py [--graph] [CRATE_SRC_DIR ...]

With no directories it checks every workspace crate's `src/`. Prints each circle as
`a -> b -> a` and exits 1 when there is one; `--graph` also prints every edge.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line structure."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not re.match(r"[A-Za-z0-9_]", text[i - 1])):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{..}') or a lifetime ('a): only the former is skipped.
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_inline_modules(text):
    """Removes `mod name { … }` blocks (tests and the like), keeping `mod name;` lines."""
    out, i = [], 0
    pattern = re.compile(r"\bmod\s+" + IDENT + r"\s*\{")
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        out.append("\n" * text.count("\n", m.start(), j))
        i = j


def expand_use_tree(tree):
    """`a::{b, c::{d, e as f}}` → [["a","b"], ["a","c","d"], ["a","c","e"]] (aliases kept)."""
    tree = re.sub(r"\s+", "", tree)

    def parse(s, prefix):
        paths, depth, start = [], 0, 0
        parts = []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for part in parts:
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0:
                head = [p for p in part[:brace].split("::") if p]
                paths += parse(part[brace + 1:part.rfind("}")], prefix + head)
            else:
                alias = None
                if "as" in part and re.search(r"[A-Za-z0-9_]as[A-Za-z_]", part):
                    # whitespace was removed: split on the last "as" between identifiers
                    m = re.match(r"(.*[A-Za-z0-9_*])as(" + IDENT + r")$", part)
                    if m:
                        part, alias = m.group(1), m.group(2)
                paths.append((prefix + [p for p in part.split("::") if p], alias))
        return paths

    return parse(tree, [])


def file_module(src_dir, path):
    rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def crate_modules(src_dir):
    """Every file module under src_dir, keyed by module path, with its cleaned source."""
    modules = {}
    for root, _, files in os.walk(src_dir):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            # A binary's main.rs beside lib.rs is its own crate; only the library tree is checked.
            if name == "main.rs" and root == src_dir and os.path.exists(os.path.join(src_dir, "lib.rs")):
                continue
            if name == "build.rs":
                continue
            with open(path, encoding="utf-8") as f:
                text = drop_inline_modules(strip_comments_and_strings(f.read()))
            modules[file_module(src_dir, path)] = text
    return modules


def resolve(start, segments, modules, reexports=None):
    """The deepest known module that `segments` names, starting from module `start`.

    An item a module re-exports (`pub use`) resolves to the module that defines it, so a facade
    (`pub use error::Error` in lib.rs) is not a dependency of everyone who names `crate::Error`.
    """
    current = start
    for k, seg in enumerate(segments):
        if reexports and k == len(segments) - 1 and (current, seg) in reexports:
            return reexports[(current, seg)]
        if seg == "super":
            if not current:
                return None
            current = current[:-1]
        elif seg == "self":
            continue
        elif seg == "crate":
            current = ()
        elif current + (seg,) in modules:
            current = current + (seg,)
        else:
            break
    return current


def reexports_of(modules):
    """(module, name) → the module that defines what `pub use` makes visible as module::name."""
    found = {}
    for _ in range(3):  # re-exports of re-exports settle within a few rounds
        for module, text in modules.items():
            for m in re.finditer(r"\bpub(\([^)]*\))?\s+use\s+([^;]+);", text):
                for segments, alias in expand_use_tree(m.group(2)):
                    if not segments or segments[-1] in ("*", "self"):
                        continue
                    if segments[0] not in ("crate", "super", "self") and module + (segments[0],) not in modules:
                        continue
                    target = resolve(module, segments, modules, found)
                    if target is not None and target != module:
                        found[(module, alias or segments[-1])] = target
    return found


def edges_of(module, text, modules, reexports):
    edges = set()
    children = {m[-1] for m in modules if len(m) == len(module) + 1 and m[:-1] == module}
    imported = {}  # a name a `use` brought in that is itself a module → that module

    for m in re.finditer(r"\buse\s+([^;]+);", text):
        for segments, alias in expand_use_tree(m.group(1)):
            if not segments or segments[0] not in ("crate", "super", "self") and segments[0] not in children:
                continue
            target = resolve(module, segments, modules, reexports)
            if target is None:
                continue
            edges.add(target)
            last = segments[-1]
            parent = resolve(module, segments[:-1], modules)
            if last not in ("*", "self") and parent is not None and target == parent + (last,):
                imported[alias or last] = target
            if last == "self" and len(segments) > 1:
                imported[alias or segments[-2]] = target

    code = re.sub(r"\buse\s+[^;]+;", "", text)
    code = re.sub(r"\b(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*;", "", code)
    path_re = re.compile(r"(?<![A-Za-z0-9_:])(" + IDENT + r"(?:\s*::\s*" + IDENT + r")+)")
    for m in path_re.finditer(code):
        segments = [s.strip() for s in m.group(1).split("::")]
        head = segments[0]
        if head in ("crate", "super", "self") or head in children:
            target = resolve(module, segments, modules, reexports)
        elif head in imported:
            target = resolve(imported[head], segments[1:], modules, reexports)
        else:
            continue
        if target is not None:
            edges.add(target)
    edges.discard(module)
    return edges


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def one_circle(component, graph):
    """A shortest circle through the first module of a component, for the message."""
    members = set(component)
    start = component[0]
    frontier, seen = [[start]], {start}
    while frontier:
        nxt = []
        for path in frontier:
            for w in sorted(graph[path[-1]]):
                if w == start:
                    return path + [start]
                if w in members and w not in seen:
                    seen.add(w)
                    nxt.append(path + [w])
        frontier = nxt
    return component


def name(crate, module):
    return crate + ("::" + "::".join(module) if module else "")


def workspace_crates(root):
    dirs = []
    for entry in sorted(os.listdir(root)):
        src = os.path.join(root, entry, "src")
        if os.path.isfile(os.path.join(root, entry, "Cargo.toml")) and os.path.isdir(src):
            dirs.append(src)
    return dirs


def main(argv):
    show_graph = "--graph" in argv
    dirs = [a for a in argv if a != "--graph"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = dirs or workspace_crates(root)
    failed = False
    for src in dirs:
        crate = os.path.basename(os.path.dirname(os.path.abspath(src)))
        modules = crate_modules(src)
        reexports = reexports_of(modules)
        graph = {m: edges_of(m, t, modules, reexports) for m, t in modules.items()}
        if show_graph:
            for m in sorted(graph):
                for w in sorted(graph[m]):
                    print(f"{name(crate, m)} -> {name(crate, w)}")
        found = cycles(graph)
        for component in found:
            failed = True
            circle = one_circle(component, graph)
            print(f"{crate}: import circle: " + " -> ".join(name(crate, m) for m in circle))
            if len(component) > len(circle) - 1:
                print(f"{crate}:   (the circle is part of a knot of {len(component)} modules: "
                      + ", ".join(name(crate, m) for m in component) + ")")
        print(f"{crate}: {len(modules)} modules, {sum(len(e) for e in graph.values())} edges, "
              f"{len(found)} circle(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
