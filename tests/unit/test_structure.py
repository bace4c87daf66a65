"""The shape of the house: no import cycles, light entry points, models apart from training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "metamapper"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def import_graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    """module -> the metamapper modules it imports, anywhere in the file (inside functions too),
    and under ``if TYPE_CHECKING:`` only with ``type_checking``. ``from pkg import sub`` counts
    as an import of the submodule ``pkg.sub`` when there is one, else of ``pkg`` (its
    ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = set() if type_checking else {
            id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    deps.add(sub if sub in modules else base)
        if name == "metamapper":  # the front door imports lazily (PEP 562); see its __getattr__
            deps = set()
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "metamapper.train.episodic" in graph and graph["metamapper.train.episodic"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# The layers of the package, bottom first, written down once: a module imports from its own layer
# and the ones below it, never from one above (not even for a type annotation). A module belongs
# to the layer of the longest name here that it is or lies under; a new module must find one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("metamapper", "_version", "config", "registry", "device", "downloads",
                     "distributed", "data.images", "data.words", "eval.metrics", "eval.report")),
    ("models", ("models",)),  # the frozen backbones, the mapper, generation
    ("data", ("data",)),  # task sources, corpora, the feature cache
    ("meta", ("meta",)),  # episodes and the functional inner loop
    ("loading", ("checkpoint", "runs", "hub", "model_card", "loading")),  # run folders, exports, load_run
    ("eval", ("eval.fewshot",)),  # adapt, answer, score
    ("train", ("train",)),  # the training recipes
    ("methods", ("methods",)),  # the registered adaptation methods (recipe + evaluation each)
    ("api", ("pretrained", "eval.run")),  # the Python API and the evaluation of a loaded run
    ("apps", ("demo", "study", "web", "cli")),  # what the command line and the web page run
)


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of ``metamapper.X``'s layer."""
    rel = module.removeprefix("metamapper.") if module != "metamapper" else "metamapper"
    best, level = "", -1
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (rel == n or rel.startswith(n + ".")) and len(n) > len(best):
                best, level = n, i
    assert level >= 0, f"{module} is in no layer: add it to LAYERS"
    return level


def test_the_layer_check_finds_an_arrow_up() -> None:
    assert layer_of("metamapper.train.episodic") > layer_of("metamapper.eval.fewshot")
    assert layer_of("metamapper.eval.report") < layer_of("metamapper.models.mapper")  # longest name wins
    assert layer_of("metamapper.data.words") < layer_of("metamapper.data.tasks")


def test_no_module_imports_one_above_its_layer() -> None:
    graph = import_graph(type_checking=True)
    up = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) -> {d} ({LAYERS[layer_of(d)][0]})"
                for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))
    assert not up, "\n".join(up)


def test_models_import_nothing_from_loading_eval_or_training() -> None:
    graph = import_graph()
    reach, todo = set(), [m for m in graph if m.startswith("metamapper.models")]
    while todo:
        m = todo.pop()
        for d in graph[m]:
            if d not in reach:
                reach.add(d)
                todo.append(d)
    banned = {m for m in reach if m.startswith(("metamapper.train", "metamapper.eval", "metamapper.demo",
                                                  "metamapper.pretrained", "metamapper.cli",
                                                  "metamapper.web"))}
    assert not banned


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import metamapper.config", "import metamapper",
                                       "from metamapper.config import load_config"])
def test_config_and_the_front_door_import_no_torch(statement: str) -> None:
    assert "torch" not in _loaded_after(statement)


def test_importing_models_loads_no_training_eval_or_loading_code() -> None:
    loaded = _loaded_after("import metamapper.models.metamapper, metamapper.models.factory")
    assert "metamapper.models.metamapper" in loaded
    assert not {m for m in loaded if m.startswith(("metamapper.train", "metamapper.eval",
                                                    "metamapper.pretrained", "metamapper.demo"))}


def test_the_front_door_names_resolve() -> None:
    import metamapper

    for name in metamapper.__all__:
        assert getattr(metamapper, name) is not None, name
    assert metamapper.MetaMapper.from_pretrained
    assert "fashion-mnist" in metamapper.TASK_SOURCES.names()  # the built-in sources registered
    with pytest.raises(AttributeError):
        metamapper.no_such_name  # noqa: B018


def test_config_show_prints_the_one_default() -> None:
    """``Config()`` is the one written default: ``config show`` prints it, and the shipped
    ``configs/broad.yaml`` names it without repeating any of its values."""
    import yaml

    from metamapper.config import Config, config_from_dict

    cli = [sys.executable, "-m", "metamapper.cli", "config", "show"]
    plain = subprocess.run(cli, check=True, capture_output=True, text=True).stdout
    assert config_from_dict(yaml.safe_load(plain)) == Config()
    assert "method: in_context" in plain and "cosine: true" in plain
    broad = SRC.parent / "configs" / "broad.yaml"
    assert yaml.safe_load(broad.read_text()) == {}  # written once: in config.py
    shipped = subprocess.run([*cli, "--config", str(broad)], check=True, capture_output=True, text=True).stdout
    assert shipped == plain
    changed = subprocess.run([*cli, "train.updates=7"], check=True, capture_output=True, text=True).stdout
    assert "updates: 7" in changed and changed.replace("updates: 7", "updates: 300") == plain


def metamapper_assignments(source: str) -> list[str]:
    """``name.attr = ...`` (or ``setattr(name, ...)``) where ``name`` was imported from
    metamapper: code outside the package rebinding the library's names at run time."""
    tree = ast.parse(source)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("metamapper")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metamapper"):
            imported |= {a.asname or a.name for a in node.names}

    def root(expr: ast.expr) -> str | None:
        while isinstance(expr, ast.Attribute):
            expr = expr.value
        return expr.id if isinstance(expr, ast.Name) else None

    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
            targets = [ast.Attribute(value=node.args[0], attr="?")]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute) and root(sub) in imported:
                    found.append(f"line {node.lineno}: {ast.unparse(sub)}")
                    break
    return found


def test_the_assignment_finder_finds_a_patch() -> None:
    patched = ("import metamapper.eval.fewshot\nfrom metamapper.models import factory\n"
               "from metamapper.models.mapper import _FeatureStats as S\n"
               "metamapper.eval.fewshot.task_prefixes = f\nfactory.build_model = g\nS.set = h\n"
               "setattr(factory, 'x', 1)\n")
    assert len(metamapper_assignments(patched)) == 4
    assert metamapper_assignments("from metamapper.methods import get_method\nm = get_method('maml')\n"
                                  "x = object()\nx.y = 1\n") == []


@pytest.mark.parametrize("folder", ["experiments", "benchmarks"])
def test_no_experiment_or_benchmark_rebinds_the_librarys_names(folder: str) -> None:
    """A variant plugs in through a registry (a method, a task source, a backbone), never by
    assigning into metamapper's modules or classes from outside."""
    found = {p.name: hits for p in sorted((SRC.parent / folder).glob("*.py"))
             if (hits := metamapper_assignments(p.read_text()))}
    assert not found, found
