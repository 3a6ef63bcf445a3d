"""The package's seams: no module imports another's private name, and `import dynsys` is light."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "dynsys"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_a_private_name_of_another():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dynsys"):
                crossings += [f"{here}: from {node.module} import {a.name}"
                              for a in node.names if a.name.startswith("_")
                              and node.module != here]
    assert not crossings, "\n".join(crossings)


def test_import_dynsys_loads_no_numerical_library():
    code = ("import sys, dynsys; heavy = [m for m in ('jax', 'flax', 'scipy', 'rich', 'torch') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_lazy_name_resolves():
    import dynsys
    for name in dynsys.__all__:
        assert getattr(dynsys, name) is not None, name
