"""Layers import one way: data → models → engine | inference → apps. Every import is read, inside functions too."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "wildwatch"

# (importer layer, imported layer): never allowed
FORBIDDEN = {
    ("data", "models"), ("data", "engine"), ("data", "inference"),
    ("models", "engine"), ("models", "inference"),
    ("inference", "engine"), ("reports", "engine"),
    ("inference", "service"), ("inference", "monitor"), ("engine", "service"), ("monitor", "service"),
    ("inference", "cli"), ("engine", "cli"), ("monitor", "cli"), ("service", "cli"),
    # the events store (sightings, cases, the outbox) is shared by the monitor and the service, below both
    ("store", "monitor"), ("store", "service"), ("store", "inference"), ("store", "engine"), ("store", "cli"),
    ("service", "monitor"), ("inference", "store"),
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "wildwatch":
        return None
    if module == "wildwatch.cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "root"


def imports_of(path: Path, module: str) -> set[str]:
    found = set()
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + [node.module] if node.module else base)
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}  # "from wildwatch import cli"
    return found


def test_imports_follow_the_layers():
    broken = []
    for path in SRC.rglob("*.py"):
        module = ".".join(("wildwatch", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        me = layer_of(module)
        for other in imports_of(path, module):
            if (me, layer_of(other)) in FORBIDDEN:
                broken.append(f"{module} imports {other}")
    assert broken == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from wildwatch.engine.train import fit\n    from ..service import app\n")
    found = imports_of(f, "wildwatch.inference.x")
    assert "wildwatch.engine.train" in found and "wildwatch.service" in found
    assert ("inference", layer_of("wildwatch.engine.train")) in FORBIDDEN


SKELETON = ["engine/fit.py", "engine/train.py", "engine/transfer.py", "engine/finetune.py"]


def long_functions(path: Path, root: Path = SRC, limit: int = 60) -> list[str]:
    """The functions (methods and nested functions too) of a file that run to ``limit`` lines or more."""
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= limit:
            long.append(f"{path.relative_to(root)}:{node.name} {node.end_lineno - node.lineno + 1} lines")
    return long


def test_no_function_of_the_training_skeleton_is_over_60_lines():
    assert [f for rel in SKELETON for f in long_functions(SRC / rel)] == []


def test_no_function_in_src_is_over_60_lines():
    assert [f for path in sorted(SRC.rglob("*.py")) for f in long_functions(path)] == []


def test_the_length_check_sees_a_long_nested_function(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("def outer():\n    def inner():\n" + "        x = 1\n" * 60 + "    return inner\n\n\ndef short():\n    pass\n")
    assert [x.split(" ")[0] for x in long_functions(f, tmp_path)] == ["probe.py:outer", "probe.py:inner"]


def test_every_recipe_is_a_strategy_of_the_one_skeleton():
    from wildwatch.config import TrainConfig
    from wildwatch.engine.finetune import FineTune
    from wildwatch.engine.fit import Strategy, strategy_for
    from wildwatch.engine.train import FromScratch
    from wildwatch.engine.transfer import CachedFeatureTransfer

    kinds = {type(strategy_for(TrainConfig(data=".", model=m, finetune=f)))
             for m, f in (("seed_m4_gap", False), ("effnet_lite0", False), ("effnet_lite0", True))}
    assert kinds == {FromScratch, CachedFeatureTransfer, FineTune}
    hooks = [n for n in dir(Strategy) if not n.startswith("_")]
    for kind in kinds:
        assert all(callable(getattr(kind, n)) or n == "title" for n in hooks), kind


def test_cli_prints_expected_errors_and_keeps_bugs():
    import typer

    from wildwatch.cli import friendly_errors
    from wildwatch.errors import UsageError

    @friendly_errors
    def expected():
        raise UsageError("--format x needs --output")

    @friendly_errors
    def bug():
        raise ValueError("a bug")

    try:
        expected()
    except typer.Exit as e:
        assert e.exit_code == 2
    else:
        raise AssertionError("no exit")
    try:
        bug()
    except ValueError as e:
        assert str(e) == "a bug"
    else:
        raise AssertionError("the bug was hidden")
