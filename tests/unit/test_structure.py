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


def import_graph() -> dict[str, set[str]]:
    """module -> the metamapper modules it imports, anywhere in the file (inside functions too),
    except under ``if TYPE_CHECKING:``. ``from pkg import sub`` counts as an import of the
    submodule ``pkg.sub`` when there is one, else of ``pkg`` (its ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
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
