"""The house's floors: every module imports in isolation, there is no import cycle, and nothing low imports anything
high (``layers/`` never imports ``models/``, ``data/`` never imports ``engine/``, ``checkpoint.py`` is a leaf, ...).

The graph is read from the source with the standard library (``ast``), function-level imports included, so a lazy
import cannot hide a cycle.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import visionmix

ROOT = Path(visionmix.__file__).parent
PACKAGE = 'visionmix'

# Each module's floor; a module may import modules of its own floor or below. The package __init__ files are the
# public facade (they re-export) and are left out of the floor rule, not out of the cycle check.
FLOORS = [
    ('leaf', ('errors', 'reporting', 'sizes', 'dilation', 'bpr', 'checkpoint', 'layers', 'data')),
    ('registry', ('registry',)),
    ('models', ('models',)),
    ('profile', ('profile',)),
    ('engine', ('engine',)),
    ('tools', ('analysis', 'deploy', 'study')),
    ('cli', ('cli', '__main__')),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob('*.py'))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Modules named by one ``from ... import ...`` (a submodule when the imported name is one)."""
    if node.level:
        base = module.split('.') if is_package else module.split('.')[:-1]
        base = base[:len(base) - node.level + 1]
        target = '.'.join(base + (node.module.split('.') if node.module else []))
    else:
        target = node.module or ''
    if not target.startswith(PACKAGE):
        return []
    found = []
    for alias in node.names:
        candidate = f'{target}.{alias.name}'
        found.append(candidate if candidate in MODULES else target)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                edges.update(_resolve(module, path.name == '__init__.py', node))
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith(PACKAGE))
        graph[module] = {e for e in edges if e in MODULES and e != module}
    return graph


def _floor(module: str) -> int | None:
    parts = module.split('.')
    if len(parts) == 1 or MODULES[module].name == '__init__.py' and len(parts) == 2:
        return None  # the package facade and top-level package inits
    for index, (_, names) in enumerate(FLOORS):
        if parts[1] in names:
            return index
    raise AssertionError(f'{module} has no floor: add its top-level name to FLOORS')


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert 'visionmix.registry' in graph['visionmix.engine.building']
    assert 'visionmix.checkpoint' in graph['visionmix.registry']
    assert len(MODULES) > 30


def test_no_import_cycle():
    # package __init__ files re-export their submodules; an edge from a submodule to its own package's __init__
    # (``from . import x``) would be a cycle through the facade, which is what this test forbids too
    assert _cycles(import_graph()) == []


def test_nothing_low_imports_anything_high():
    violations = []
    for module, targets in import_graph().items():
        floor = _floor(module)
        if floor is None:
            continue
        for target in targets:
            target_floor = _floor(target)
            if target_floor is not None and target_floor > floor:
                violations.append(f'{module} ({FLOORS[floor][0]}) imports {target} ({FLOORS[target_floor][0]})')
    assert violations == []


def test_leaves_import_nothing_of_visionmix_above_them():
    graph = import_graph()
    assert graph['visionmix.checkpoint'] <= {'visionmix.errors'}  # takes the key filter it is given
    assert graph['visionmix.errors'] == set()
    for module, targets in graph.items():
        if module.startswith('visionmix.layers'):
            assert not any(t.startswith('visionmix.models') for t in targets), module
        if module.startswith('visionmix.data'):
            assert not any(t.startswith(('visionmix.engine', 'visionmix.models', 'visionmix.registry'))
                           for t in targets), module


def test_every_module_imports_in_isolation():
    """Each module in a fresh state of visionmix: its modules are dropped from sys.modules and timm's registry is put
    back as it was before visionmix registered into it, between imports (torch and timm stay loaded, which keeps
    this to one interpreter)."""
    code = '''
import importlib, json, sys, traceback
import timm.models._registry as registry
tables = [n for n in dir(registry) if n.startswith(("_model_", "_module_"))]
clean = {n: set(getattr(registry, n)) for n in tables}  # the keys (or members) timm itself registered
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "visionmix" or m.startswith("visionmix.")]:
        del sys.modules[loaded]
    for n, keys in clean.items():
        table = getattr(registry, n)
        for added in set(table) - keys:
            table.remove(added) if isinstance(table, set) else table.pop(added)
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=3)
print(json.dumps(failed))
'''
    names = [m for m in MODULES if m != 'visionmix.__main__']
    out = subprocess.run([sys.executable, '-c', code, json.dumps(names)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
