"""The house's import rules (README, "Architecture"): dependencies point down (import-linter's
contracts in pyproject.toml), the command line starts without the heavy libraries, and an
import inside a function is a deliberate lazy one that says why."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("semisynth", "tasks", "flows", "quality", "warehouse")
HEAVY = ("torch", "transformers", "prefect", "great_expectations", "datasets", "huggingface_hub",
         "dask", "distributed", "scipy", "pandas", "pyarrow", "duckdb", "matplotlib",
         "pydantic_settings")


def test_help_loads_none_of_the_heavy_libraries():
    """`semisynth edit --help` (the command line, its options built from the edit
    strategies) loads none of them: each command imports what it runs."""
    code = ("import sys\nfrom semisynth.cli import main\ntry:\n    main(['edit', '--help'])\n"
            "except SystemExit:\n    pass\n"
            f"print('loaded:', *[m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=REPO / "tests")
    assert out.stdout.splitlines()[-1] == "loaded:"


def _function_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    yield sub


def test_every_import_inside_a_function_says_why_it_is_lazy():
    """An import inside a function is a lazy import of something heavy, and the comment line
    above its block of imports starts with '# lazy:'."""
    unexplained = []
    for folder in PACKAGE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            for imp in _function_imports(path):
                i = imp.lineno - 2  # the line above, 0-based
                while i >= 0 and lines[i].lstrip().startswith(("import ", "from ")):
                    i -= 1  # the block of imports it belongs to
                while i >= 0 and lines[i].lstrip().startswith("#") and \
                        not lines[i].lstrip().startswith("# lazy:"):
                    i -= 1  # comments above the block
                if i < 0 or not lines[i].lstrip().startswith("# lazy:"):
                    unexplained.append(f"{path.relative_to(REPO)}:{imp.lineno}")
    assert unexplained == []


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_dependencies_point_down_and_no_package_has_a_cycle(tmp_path):
    """import-linter's contracts (pyproject.toml), on the package as a wheel installs it:
    flows/, tasks/, ... are subpackages of semisynth only there."""
    source, site = tmp_path / "source", tmp_path / "site"
    # a copy: building writes build/ beside the sources
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".ruff_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([str(Path(sys.executable).parent / "lint-imports"),
                          str(REPO / "pyproject.toml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 kept, 0 broken" in out.stdout
