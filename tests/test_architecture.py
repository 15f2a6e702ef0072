"""The layering of ARCHITECTURE.md, checked on the source: what each folder may import.

- ``schemas/`` and ``core/`` (the engine-neutral core) import no engine and none of the
  adapters, the launcher or the edge services, and they import with Beam absent (a
  PyFlink worker runs Beam 2.61, not the project's 2.77, and must not need it).
- ``nfc_gateway/`` (an edge service) never imports the launcher or an engine adapter.
- No import cycles between the project's modules (module-level imports).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("schemas", "core", "transforms", "pipelines", "kafka_client", "nfc_gateway", "synthetic", "flink_job",
            "portal")
ENGINES = ("apache_beam", "pyflink")

# What a folder must never import, anywhere in its modules (lazy imports included).
FORBIDDEN = {
    "schemas": ENGINES + ("core", "transforms", "pipelines", "kafka_client", "nfc_gateway", "synthetic"),
    "core": ENGINES + ("transforms", "pipelines", "kafka_client", "nfc_gateway", "synthetic"),
    "kafka_client": ENGINES + ("transforms", "pipelines", "nfc_gateway", "synthetic"),
    "nfc_gateway": ENGINES + ("transforms", "pipelines", "portal"),
    # the portal: a service over the outputs, with the core, schemas and the Kafka client only
    "portal": ENGINES + ("transforms", "pipelines", "nfc_gateway", "synthetic", "flink_job"),
    # the Flink host: runs in the PyFlink venv (its Beam is 2.61), with the core and schemas only
    "flink_job": ("apache_beam", "transforms", "pipelines", "kafka_client", "nfc_gateway", "synthetic"),
}


def modules() -> dict[str, str]:
    """module name -> path, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        root = os.path.join(REPO, package)
        if not os.path.isdir(root):
            continue
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def imports_of(path: str, module: str, top_level_only: bool) -> set[str]:
    """Absolute names imported by a module (relative imports resolved)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:   # module-level code only, but look inside try/if blocks at that level
        nodes = [n for top in tree.body for n in ast.walk(top)
                 if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))] + \
                [n for top in tree.body if isinstance(top, ast.ClassDef) for n in top.body
                 if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = set()
    is_package = path.endswith("__init__.py")
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


MODULES = modules()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_it_must_not(package):
    offending = []
    for module, path in sorted(MODULES.items()):
        if module.split(".")[0] != package:
            continue
        for name in sorted(imports_of(path, module, top_level_only=False)):
            if name.split(".")[0] in FORBIDDEN[package]:
                offending.append(f"{module} imports {name}")
    assert not offending, "\n".join(offending)


def test_no_import_cycles_between_project_modules():
    graph = defaultdict(set)
    for module, path in MODULES.items():
        for name in imports_of(path, module, top_level_only=True):
            # ``from pkg import mod`` names the module pkg.mod; ``from mod import fn`` names mod
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    # Tarjan's strongly connected components
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(MODULES):
        if node not in index:
            visit(node)
    assert not cycles, cycles


BLOCK_ENGINES = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {engines!r}:
            raise ImportError('engine blocked: ' + name)
sys.meta_path.insert(0, Block())
for package in ('schemas', 'core'):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + '.'):
        importlib.import_module(info.name)
print('imported', sorted(m for m in sys.modules if m.split('.')[0] in ('schemas', 'core')))
"""


def test_the_core_imports_with_no_engine_installed():
    """A Flink worker without Beam 2.77 runs the core: import every core module with Beam blocked."""
    out = subprocess.run([sys.executable, "-c", BLOCK_ENGINES.format(engines=ENGINES)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "core.processor" in out.stdout and "schemas.records" in out.stdout, out.stdout[-2000:]


def test_the_launcher_reads_the_flink_job_config_without_pyflink():
    """``pipelines.flink_engine`` (project venv, no PyFlink) writes the job's config with
    ``flink_job.config``: that module and the package itself import with every engine blocked."""
    code = BLOCK_ENGINES.split("for package in")[0] + (
        "import flink_job, flink_job.config\nprint('ok', flink_job.config.JobSettings().job_name)\n")
    out = subprocess.run([sys.executable, "-c", code.format(engines=ENGINES)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok tapfollow"), out.stdout
