"""benchmarks/gpu.py --dry-run: the lent GPU's script runs here at a tiny size, without the
packages a lent machine lacks (prefect, duckdb, Great Expectations, dask: imports of them
are refused), and ends with the JSON line the issue's figures are read from."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("prefect", "duckdb", "great_expectations", "dask", "distributed")

# A lent machine's Python: the modules it lacks cannot be imported.
RUN_WITHOUT = f"""
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on a lent GPU)")
        return None
sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

RATES = ("engine", "body_eager", "body_compiled", "stage", "llama8b", "train")


def test_gpu_benchmark_dry_run(prior_folder, brown_shards, tmp_path):
    text = str(Path(brown_shards[0]).parent / "*.jsonl.gz")
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, str(REPO / "benchmarks" / "gpu.py"), "--dry-run",
         "--prior", str(prior_folder), "--text", text],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["dry_run"] is True and "documents of" in out["text"]  # real prose was read
    for name in RATES:
        assert out[f"{name}_tokens_per_s"] > 0, name
        assert out[f"{name}_share"] > 0, name
    for key in ("matmul_tflops", "prior_bound_tokens_per_s", "prior_gflop_per_token",
                "train_tflops", "stage_vs_engine", "engine_batch_tokens", "llama8b_batch_tokens"):
        assert out[key] > 0, key
    for key in ("engine_compile_seconds", "llama8b_compile_seconds", "train_compile_seconds"):
        assert out[key] >= 0, key
    assert set(out["targets"]) == {"engine_share", "llama8b_share", "stage_vs_engine",
                                   "train_share"}
    assert all(t["value"] == out[k] for k, t in out["targets"].items())
    table = "\n".join(lines[:-1])
    assert "engine (Scorer, batch auto)" in table and "stage / engine" in table
