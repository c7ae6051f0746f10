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
