"""Plain user errors (issue 19): each exits 2 with a message naming the path or key it is
about, at once and without a traceback.
The commands run for real: in this process through ``main`` where nothing else is needed,
as the console script where the exit, the time, the memory or the user it runs as is the
point."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from semisynth.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
SEMISYNTH = Path(sys.executable).with_name("semisynth")
DOC = {"id": "a", "text": "The jury said the election was conducted fairly and the city thanked."}
# The classic "billion laughs": 342 bytes whose aliases expand to 9^9 (387 million) strings
BOMB = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]"
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True)]) + "\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMISYNTH_")}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _error(stderr: str) -> str:
    """The command's error line (libraries may warn before it)."""
    return next((line for line in stderr.splitlines() if line.startswith("error: ")), stderr)


def _docs(folder: Path) -> tuple[Path, Path]:
    """Two small document files: a candidate and a reference."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    a.write_text(json.dumps(DOC) + "\n")
    b.write_text(json.dumps({**DOC, "id": "b"}) + "\n")
    return a, b


def _peak(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, float, float]:
    """``semisynth ARGS`` through ``main`` in a process of its own: its result, seconds,
    and the process's peak resident memory in MB."""
    code = ("import resource, sys\nfrom semisynth.cli import main\n"
            f"rc = main({list(args)!r})\n"
            "print(f'peak-rss-kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', "
            "file=sys.stderr)\nsys.exit(rc)")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=_env())
    took = time.monotonic() - started
    peak = next(int(line.split("=")[1]) for line in proc.stderr.splitlines()
                if line.startswith("peak-rss-kb="))
    return proc, took, peak / 1024


def test_a_yaml_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path):
    """The 342-byte billion laughs took 43 s and 3.2 GB before its exit 2, building the
    repr of 9^9 strings for its error message; its aliases are now counted before any
    value is built."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    a, b = _docs(tmp_path / "docs")
    proc, took, peak_mb = _peak("validate", str(a), "--reference", str(b), "--config", str(bomb),
                                timeout=30)
    assert proc.returncode == 2, proc.stderr
    error = _error(proc.stderr)
    assert error == (f"error: {bomb}:6:4: its aliases expand this value to more than 100,000 "
                     "values (an alias bomb?); a config is refused past that"), error
    assert took < 20 and peak_mb < 1000, (took, peak_mb)
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("name: t\ncorpora: &c {x: *c}\n")
    proc, _, _ = _peak("validate", str(a), "--reference", str(b), "--config", str(cycle),
                       timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr) == (f"error: {cycle}:2:10: an alias refers to a value that "
                                   "holds it (a cycle)")


def test_config_errors_quote_at_most_80_characters_of_a_value(tmp_path, capsys):
    a, b = _docs(tmp_path / "docs")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"corpora": {"ref": {"role": "reference",
                                                          "paths": [str(b)]}}}))
    args = ["validate", str(a), "--reference", str(b), "--config", str(config)]
    shares = json.dumps({f"c{i}": 2.0 for i in range(5000)})
    for bad in ["name=" + "x" * 100_000, f"corpora.m.mix={shares}",
                f"edit.top_k=[{','.join(['1'] * 100_000)}]", "x" * 100_000,
                f"corpora.{'x' * 100_000}.paths=[{b}]"]:
        assert cli([*args, "--set", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err) < 600, (len(err), err[:600])
        assert "..." in err
