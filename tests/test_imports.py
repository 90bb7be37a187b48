"""The library's architecture: its import graph has no loop (counting imports inside functions and type-only
ones), every floor imports only the floors below it, and the rules the engine refactor set hold."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "snows_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST, known: set[str]) -> set[str]:
    """snows_core modules imported anywhere in `tree` (functions and `if TYPE_CHECKING:` included)."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
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
    assert "snows_core.prune" in graph and "snows_core.engine.reconstruct" in graph["snows_core.prune"]
    assert find_loop(graph) is None, " -> ".join(find_loop(graph))


FLOORS = [  # each floor imports only the floors before it (and the shared plumbing)
    ("engine",),
    ("masks",),
    ("prune", "scan"),
    ("models", "io", "measure"),
    ("runs", "dashboard", "cli", "__main__"),
]
PLUMBING = {"snows_core", "snows_core.config", "snows_core.events", "snows_core.report", "snows_core.registry"}


def floor_of(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return next((i for i, rooms in enumerate(FLOORS) if part in rooms), None)


def test_every_floor_imports_only_the_floors_below_it():
    graph = import_graph()
    upward = []
    for module, imported in graph.items():
        floor = floor_of(module)
        if floor is None or floor == 3:  # models, io and measure sit beside the algorithm
            continue
        upward += [f"{module} -> {m}" for m in imported - PLUMBING if (floor_of(m) or 0) > floor and floor_of(m) != 3]
    assert upward == []
    assert "snows_core.engine.problem" in graph["snows_core.masks.obc"]  # the check sees what it checks


def test_models_and_runs_import_the_loops_and_no_helper_of_theirs():
    for path in [*(PACKAGE / "models").rglob("*.py"), *(PACKAGE / "runs").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("snows_core.prune", "snows_core.scan"):
                names = {alias.name for alias in node.names}
                assert names <= {"prune_model", "sensitivity_analysis", "scan_sparsities"}, (path, names)


def test_the_top_level_holds_at_most_twelve_modules_and_the_rest_is_grouped():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} >= {"engine", "masks", "io", "measure"}


def test_no_call_in_the_library_passes_more_than_six_positional_arguments():
    crowded = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and len(node.args) > 6
    ]
    assert crowded == []


def test_the_old_import_paths_still_work():
    from snows_core.data import load_dataset
    from snows_core.lookahead import PrunedPath, build_window
    from snows_core.reconstruct import LayerProblem, get_reconstruction

    from snows_core.io.data import load_dataset as moved

    assert load_dataset is moved and moved.__module__ == "snows_core.io.data"
    assert PrunedPath.__module__ == "snows_core.engine.graph" and build_window.__module__ == "snows_core.engine.window"
    assert LayerProblem.__module__ == "snows_core.engine.problem" and callable(get_reconstruction)
    import snows_core.io.data
    import snows_core.masks

    assert snows_core.io.data.__spec__.name == "snows_core.io.data"  # the alias does not rename the module
    assert snows_core.masks.register_mask_method is snows_core.register_mask_method


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
