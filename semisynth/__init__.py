"""semisynth: semi-synthetic corpora by token-level editing, collapse metrics, a release gate.

The stage folders of the repository root (flows/, tasks/, quality/, warehouse/, configs/)
install as subpackages of this one (pyproject.toml's package-dir mapping). A folder of the
same name left inside this package by the old layout would shadow them from a source
checkout (Python finds it as a namespace package before the mapped one), so importing the
package refuses to start while one is there.
"""

from pathlib import Path

STAGE_PACKAGES = ("flows", "tasks", "quality", "warehouse", "configs")


def stale_layout_folders(package_dir: Path) -> list[Path]:
    """Folders of the old layout (``semisynth/flows`` ...) that would shadow the stage
    packages of a source checkout whose root holds the new ones."""
    root = package_dir.parent
    return [package_dir / name for name in STAGE_PACKAGES
            if (package_dir / name).is_dir() and (root / name / "__init__.py").is_file()]


_stale = stale_layout_folders(Path(__file__).resolve().parent)
if _stale:
    raise ImportError(
        "stale folders of the old layout shadow the stage packages: "
        + ", ".join(str(p) for p in _stale)
        + " (the stages live at the repository root now; delete these folders)")
