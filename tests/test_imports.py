"""The import rules of issue 15: plugins are leaves and the core needs no CLI.

- a plugin (``plugins/plabel_X``) imports ``plabel_kit`` and itself, never another plugin;
- ``plabel_kit`` imports no plugin;
- only ``plabel_kit/cli.py`` imports ``plabel_kit.cli`` (plugins build commands from
  ``plabel_kit.commands``);
- nobody imports a ``_private`` name (module or attribute) from another package.

Imports are read with ``ast`` from every module, those inside functions included, with
relative imports resolved.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO, run_plabel

CORE = "plabel_kit"
CLI = "plabel_kit.cli"


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """(dotted module name, whether it is a package's ``__init__``) of a file under
    ``root/plabel_kit`` or ``root/plugins``."""
    relative = path.relative_to(root)
    parts = list(relative.with_suffix("").parts)
    if parts[0] == "plugins":
        parts = parts[1:]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imports_of(path: Path, module: str, is_package: bool):
    """(line, imported module, imported name or None) for every import in the file: ``import
    a.b`` gives ("a.b", None), ``from a.b import c`` gives ("a.b", "c"); a relative import is
    resolved against ``module``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # ``from . import x``: this package; each further dot, one up
                base = package[:len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module
            for alias in node.names:
                yield node.lineno, target, alias.name


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_violations(root: Path) -> list[str]:
    """``path:line: what`` for every import under ``root/plabel_kit`` and ``root/plugins``
    that breaks the rules in this module's docstring."""
    root = Path(root)
    plugins = {p.name for p in (root / "plugins").iterdir() if (p / "__init__.py").is_file()} \
        if (root / "plugins").is_dir() else set()
    ours = plugins | {CORE}
    files = sorted((root / CORE).rglob("*.py")) + sorted((root / "plugins").rglob("*.py"))
    found = []
    for path in files:
        module, is_package = module_name(path, root)
        home = module.split(".")[0]
        where = path.relative_to(root).as_posix()
        for line, target, name in imports_of(path, module, is_package):
            # ``from plabel_kit import cli`` imports the module plabel_kit.cli
            full = f"{target}.{name}" if name and target in (CORE, *plugins) else target
            top = target.split(".")[0]
            problem = None
            if home in plugins and top in plugins and top != home:
                problem = f"plugin {home} imports plugin {top} ({target})"
            elif home == CORE and top in plugins:
                problem = f"the core imports plugin {top} ({target})"
            elif (target == CLI or full == CLI or target.startswith(CLI + ".")) and module != CLI:
                problem = f"imports {CLI} (use plabel_kit.commands)"
            elif top in ours and top != home:
                private = [p for p in target.split(".")[1:] if _private(p)]
                if name and _private(name):
                    private.append(name)
                if private:
                    problem = f"imports the private name {private[0]} from {target} (another package)"
            if problem:
                found.append(f"{where}:{line}: {problem}")
    return found


def test_plugins_are_leaves_and_the_core_needs_no_cli():
    violations = import_violations(REPO)
    assert not violations, "import rules broken:\n" + "\n".join(violations)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "plabel_kit/__init__.py": "",
    "plabel_kit/cli.py": "from .commands import PlabelGroup\n",
    "plabel_kit/commands.py": "import click\n",
    "plabel_kit/pipeline.py": "from .errors import PlabelError\n",
    "plabel_kit/errors.py": "",
    "plugins/plabel_a/__init__.py": "from plabel_kit import hookimpl\nfrom . import helpers\n",
    "plugins/plabel_a/helpers.py": "from plabel_kit.commands import PlabelGroup\nfrom ._impl import _x\n",
    "plugins/plabel_a/_impl.py": "_x = 1\n",
    "plugins/plabel_b/__init__.py": "import plabel_kit.toolkit\n",
}


def test_the_checker_passes_a_clean_tree(tmp_path):
    assert import_violations(_tree(tmp_path, CLEAN)) == []


def test_the_checker_reports_a_plugin_importing_another_plugin(tmp_path):
    root = _tree(tmp_path, {**CLEAN, "plugins/plabel_b/model.py": (
        "import numpy\n"
        "\n"
        "def build():\n"
        "    from plabel_a.helpers import PlabelGroup  # inside a function still counts\n"
        "    return PlabelGroup\n")})
    assert import_violations(root) == [
        "plugins/plabel_b/model.py:4: plugin plabel_b imports plugin plabel_a (plabel_a.helpers)"]


@pytest.mark.parametrize("name, text, expected", [
    ("plugins/plabel_b/x.py", "import plabel_a\n", "plugins/plabel_b/x.py:1: plugin plabel_b imports plugin plabel_a"),
    ("plabel_kit/x.py", "from plabel_a import helpers\n", "plabel_kit/x.py:1: the core imports plugin plabel_a"),
    ("plabel_kit/pipeline.py", "def f():\n    from .cli import cli\n",
     "plabel_kit/pipeline.py:2: imports plabel_kit.cli"),
    ("plabel_kit/pipeline.py", "from . import cli\n", "plabel_kit/pipeline.py:1: imports plabel_kit.cli"),
    ("plugins/plabel_b/x.py", "from plabel_kit.cli import PlabelGroup\n",
     "plugins/plabel_b/x.py:1: imports plabel_kit.cli"),
    ("plugins/plabel_b/x.py", "import plabel_kit.cli\n", "plugins/plabel_b/x.py:1: imports plabel_kit.cli"),
    ("plugins/plabel_b/x.py", "from plabel_kit.registry import _helper\n",
     "plugins/plabel_b/x.py:1: imports the private name _helper"),
    ("plugins/plabel_b/x.py", "from plabel_kit._impl import thing\n",
     "plugins/plabel_b/x.py:1: imports the private name _impl"),
    ("plabel_kit/sub/deep.py", "from .. import cli\n", "plabel_kit/sub/deep.py:1: imports plabel_kit.cli"),
])
def test_the_checker_reports_each_rule(tmp_path, name, text, expected):
    found = import_violations(_tree(tmp_path, {**CLEAN, name: text}))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_csrm_needs_no_cam_plugin():
    """A plugin is usable with any other plugin disabled."""
    result = run_plabel("source", "csrm", "--help", env={"PLABEL_DISABLE_PLUGINS": "cam"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_demo_is_a_plugin_command():
    assert run_plabel("demo", "--help").returncode == 0
    result = run_plabel("demo", "--help", env={"PLABEL_DISABLE_PLUGINS": "demo"})
    assert result.returncode != 0 and "No such command 'demo'" in result.stderr
