"""The package's import structure: every module imports alone in a fresh interpreter, and the static import graph
of tlrec_utils (relative imports resolved, imports inside functions included) has no cycle."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tlrec_utils"


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, known: set[str], root: Path = REPO) -> set[str]:
    """The tlrec_utils modules `path` imports anywhere in its body (top level, functions, `if` blocks): for
    `from X import name`, X.name when that is a module, else X."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import tlrec_utils.data.paths` of a submodule's attribute
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    # a package's __init__ runs before its modules: `import tlrec_utils.x.y` imports tlrec_utils.x first, which is
    # not an edge of the cycle check (the __init__ files import nothing of the package's modules here)
    return {name: imported_modules(path, known) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "tlrec_utils.experiments.pipeline" in graph
    # a function-level import is an edge
    assert "tlrec_utils.experiments.command_line" in graph["tlrec_utils.experiments.pipeline_config"]  # in to_flags
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_find_cycle_finds_a_cycle_through_relative_and_function_level_imports(tmp_path):
    """The check itself: a cycle made of a top-level relative import and a function-level one is found."""
    pkg = tmp_path / "tlrec_utils" / "sub"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from ..sub.a import g\n    return g\n")
    (pkg.parent / "c.py").write_text("from .sub import a\n")
    names = {"tlrec_utils", "tlrec_utils.sub", "tlrec_utils.sub.a", "tlrec_utils.sub.b", "tlrec_utils.c"}
    graph = {module_name(p, tmp_path): imported_modules(p, names, tmp_path)
             for p in (tmp_path / "tlrec_utils").rglob("*.py")}
    assert graph["tlrec_utils.c"] == {"tlrec_utils.sub.a"}
    assert find_cycle(graph) in (["tlrec_utils.sub.a", "tlrec_utils.sub.b", "tlrec_utils.sub.a"],
                                 ["tlrec_utils.sub.b", "tlrec_utils.sub.a", "tlrec_utils.sub.b"])


# third-party libraries loaded once by the driver before it forks a child per module: a child imports its
# tlrec_utils module before any other tlrec_utils module (what an import order problem or a circle shows in),
# without paying torch's start-up ~60 times
PRELOAD = ("numpy", "torch", "transformers", "peft", "accelerate", "sklearn.metrics", "scipy.stats", "yaml")

DRIVER = """
import importlib, os, sys, traceback
for lib in sys.argv[1].split(","):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
assert not any(m == "tlrec_utils" or m.startswith("tlrec_utils.") for m in sys.modules)
bad = []
for name in sys.argv[2:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        bad.append(f"{name}: {message or status}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_every_module_imports_alone_in_a_process_of_its_own():
    """Each module imported first, in a process of its own forked from an interpreter that has loaded no module
    of tlrec_utils: a module that only works when another was imported before it fails here."""
    names = sorted(modules())
    proc = subprocess.run([sys.executable, "-c", DRIVER, ",".join(PRELOAD), *names], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"modules that fail to import alone:\n{proc.stdout}{proc.stderr}"
