"""The library's import graph has no loop, counting imports inside functions too (type-only imports aside)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "snows_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST, known: set[str]) -> set[str]:
    """snows_core modules imported anywhere in `tree` (functions included), except under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        found |= runtime_imports(node, known)
    return found & known


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: runtime_imports(ast.parse(p.read_text()), known) - {name} for name, p in paths.items()}


def find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (loop := visit(nxt, [*path, nxt])):
                return loop
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (loop := visit(start, [start])):
            return loop
    return None


def test_the_finder_sees_a_loop_it_is_shown():
    assert find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_loop({"a": {"b"}, "b": set()}) is None


def test_snows_core_has_no_import_loop():
    graph = import_graph()
    assert "snows_core.prune" in graph and "snows_core.reconstruct" in graph["snows_core.prune"]
    assert find_loop(graph) is None, " -> ".join(find_loop(graph))


def test_the_library_floor_never_imports_the_dashboard_or_streamlit():
    graph = import_graph()
    below = {name for name in graph if not name.startswith("snows_core.dashboard")}
    assert "snows_core.prune" in below and "snows_core.dashboard.frames" in graph
    assert [name for name in below if any(m.startswith("snows_core.dashboard") for m in graph[name])] == []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split(".")[0] == "streamlit" for m in imported), path


def test_the_store_commands_run_without_importing_torch(tmp_path):
    """`status`, `list` and `cancel` are the control plane: they read the store alone and start in a blink."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import sys; from snows_core.cli import main; "
        "codes = [main(['list', '--json']), main(['status', 'nope']), main(['cancel', 'nope'])]; "
        "print(codes, sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))"
    )
    env = dict(os.environ, SNOWS_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out.splitlines()[0]) == []  # list --json on an empty store
    assert out.splitlines()[-1] == "[0, 2, 2] []"


def test_a_reader_of_a_store_with_queued_runs_and_a_live_dispatcher_imports_no_torch(tmp_path):
    """`list` revives a missing dispatcher when runs wait; with one alive that is a lock check, not a torch import."""
    import os
    import subprocess
    import sys

    from snows_core.config import PruneConfig
    from snows_core.runs import RunSpec, RunStore
    from snows_core.runs.process import exclusive

    store = RunStore(tmp_path)
    store.create(RunSpec(model="mlp", config=PruneConfig(sparsity=0.5, n_calib=64)), "v")
    code = "import sys; from snows_core.cli import main; main(['list']); print('torch' in sys.modules)"
    env = dict(os.environ, SNOWS_HOME=str(tmp_path))
    with exclusive(tmp_path / "dispatcher.lock") as held:  # stands for the live dispatcher
        assert held
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines()[-1] == "False"


def test_submit_and_sweep_pass_the_door_without_importing_torch(tmp_path):
    """The door reads names, shapes and footprints from the catalog, dataset sizes from file headers."""
    import os
    import subprocess
    import sys

    import torch

    from snows_core.models import create_model
    from snows_core.runs import RunStore
    from snows_core.runs.process import exclusive

    weights = create_model("resnet20").state_dict()
    torch.save(weights, tmp_path / "zip.pt")
    torch.save({"state_dict": weights}, tmp_path / "legacy.th", _use_new_zipfile_serialization=False)
    quick = "'--model', 'resnet20', '--n-calib', '64'"
    code = (
        "import sys; from snows_core.cli import main; "
        f"codes = [main(['submit', {quick}]), main(['sweep', {quick}, '--k', '1,2']), "
        f"main(['submit', {quick}, '--n-calib', '60000', '--batch-size', '60000']), "
        f"main(['submit', {quick}, '--checkpoint', '{tmp_path / 'zip.pt'}']), "
        f"main(['submit', {quick}, '--checkpoint', '{tmp_path / 'legacy.th'}'])]; "
        "print(codes, 'torch' in sys.modules)"
    )
    env = dict(os.environ, SNOWS_HOME=str(tmp_path))
    with exclusive(tmp_path / "dispatcher.lock") as held:  # stands for the live dispatcher
        assert held
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines()[-1] == "[0, 0, 2, 0, 0] False", out.stderr
    assert "memory: the forecast peak" in out.stderr
    assert [run["spec"]["config"]["k"] for run in RunStore(tmp_path).list()] == [3, 1, 2, 3, 3]
