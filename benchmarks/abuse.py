"""Every careless or hostile use of issue 10, tried again: one line per case, OK or not.

Each case is run by the tests that reproduce it (real commands, real DuckDB, real processes
killed with SIGKILL, the real prior where the case needs one); this script runs exactly
those tests in one pytest session and prints, per case, what was tried, what must happen
(what the tests assert), and whether it did. The last line is JSON. Exit 0 when every case
is OK.

    .venv/bin/python benchmarks/abuse.py            # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/abuse.py --only query
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
Q = "tests/test_query.py::test_writes_files_settings_and_extensions_are_refused"
CFG = "tests/test_config.py::test_out_of_range_values_are_refused_naming_file_and_key"
EDIT = "tests/test_config.py::test_edit_command_exits_2_on_a_bad_parameter"
U = "tests/test_usage_errors.py"

# (case, what was tried, what must happen, test node ids that try it)
CASES = [
    ("query-attach", "query: ATTACH another file, re-ATTACH the warehouse READ_WRITE",
     "refused, exit 2; rows and folder untouched",
     [f"{Q}[ATTACH '{{tmp}}/other.duckdb' AS s (READ_WRITE)]", f"{Q}[ATTACH '{{wh}}' AS again (READ_WRITE)]"]),
    ("query-write", "query: DELETE, CREATE TABLE, COPY ... TO a file, EXPORT DATABASE",
     "refused; no file written",
     [f"{Q}[DELETE FROM runs]", f"{Q}[CREATE TABLE x (a INT)]",
      f"{Q}[COPY (SELECT * FROM runs) TO '{{tmp}}/out.csv']", f"{Q}[EXPORT DATABASE '{{tmp}}/export']"]),
    ("query-read-machine", "query: read_text('/etc/passwd'), read_csv, glob('/root/*'), read_parquet",
     "refused: external access is off",
     [f"{Q}[SELECT * FROM read_text('/etc/passwd')]", f"{Q}[SELECT * FROM read_csv('/etc/passwd')]",
      f"{Q}[SELECT * FROM glob('/root/*')]", f"{Q}[SELECT * FROM read_parquet('{{tmp}}/*.parquet')]"]),
    ("query-install", "query: INSTALL httpfs, LOAD httpfs", "refused, nothing downloaded",
     [f"{Q}[INSTALL httpfs]", f"{Q}[LOAD httpfs]"]),
    ("query-settings", "query: SET, PRAGMA, SET enable_external_access = true, two statements",
     "refused: the configuration is locked, one statement only",
     [f"{Q}[SET threads = 1]", f"{Q}[PRAGMA threads = 1]", f"{Q}[SET enable_external_access = true]",
      f"{Q}[SELECT 1; DELETE FROM runs]", "tests/test_query.py::test_the_command_says_why_a_statement_is_refused"]),
    ("query-long", "query: a statement that runs for minutes; Ctrl-C on one",
     "stopped at --timeout (exit 2); Ctrl-C exits 130",
     ["tests/test_query.py::test_a_long_query_is_stopped_at_its_time_limit",
      "tests/test_query.py::test_ctrl_c_stops_a_long_query_of_the_command"]),
    ("query-memory", "query: SELECT repeat('x', 2000000000) (9.9 GB against a 2 GB limit); "
     "--max-memory 512MB on 2,000 values of 200 KB",
     "refused, exit 2, naming --max-memory; the process tree's peak RSS stays under the limit",
     ["tests/test_query_limits.py::test_the_memory_limit_holds_and_what_passes_it_is_refused"]),
    ("query-rows", "query: 25,000 rows, 100 values of 1 KB with --max-bytes 10KB",
     "at most --max-rows (10,000) rows and --max-bytes printed; a line on stderr says what was cut",
     ["tests/test_query_limits.py::test_rows_and_bytes_are_capped_and_the_cut_is_said"]),
    ("query-timeout", "query: 20M rows with --timeout 15 (printing took 18.5 s); a reader of "
     "the output that never reads",
     "the timeout covers fetching and printing: done in time, or stopped at it (exit 2)",
     ["tests/test_query_limits.py::test_the_timeout_covers_fetching_and_printing"]),
    ("query-timeout-values", "query --timeout nan, inf, 0, -1; --max-rows 0, --max-bytes lots, "
     "--max-memory 1MB",
     "exit 2 naming the option; no traceback",
     ["tests/test_query_limits.py::test_limits_out_of_range_are_refused_naming_the_option"]),
    ("query-spill", "query: a temporary table larger than its memory; the command killed mid-query",
     "refused, exit 2; no spill file anywhere; the query process dies with the command",
     ["tests/test_query_limits.py::test_nothing_spills_to_disk_and_a_killed_query_leaves_nothing"]),
    ("query-waits-for-writer", "query while a writer holds the warehouse (a traceback, exit 3, "
     "in about 3% of tries during a validate)",
     "the query waits for the writer within its --timeout, then a clear error, exit 3; never a "
     "traceback",
     ["tests/test_query_limits.py::test_a_query_waits_for_a_writer_then_gives_a_clear_error"]),
    ("names-outside-root", "corpora named '../../x' and '/tmp/x', a config named '../evil'",
     "refused, exit 2 naming the key, before any work (no shard folder, no warehouse); unsafe "
     "release names and versions refused",
     ["tests/test_names.py::test_a_config_name_outside_the_rule_exits_2_naming_its_key_before_any_work",
      "tests/test_names.py::test_release_names_and_versions_follow_the_rule",
      "tests/test_names.py::test_release_verify_refuses_a_name_outside_the_rule"]),
    ("release-forged-manifest", "edit a released file and rewrite its checksum in manifest.json",
     "verify (function and command) FAILED: the manifest differs from the warehouse's record",
     ["tests/test_release.py::test_verify_checks_the_manifest_against_the_warehouse_record",
      "tests/test_release.py::test_release_verify_command_compares_with_the_warehouse"]),
    ("release-crafted-paths", "manifest entries '../../../secret.txt', an absolute path, a symlink",
     "refused as outside the release folder, never read",
     ["tests/test_release.py::test_verify_refuses_manifest_paths_outside_the_release"]),
    ("data-root-order", "a config's data_root against --data-root",
     "--data-root on the command line wins",
     ["tests/test_cli.py::test_data_root_on_the_command_line_wins_over_the_config_and_the_environment"]),
    ("ids-across-folders", "2024-01/part.jsonl and 2024-02/part.jsonl without ids",
     "distinct default ids (path from the shared folder); nothing quarantined as a duplicate",
     ["tests/test_ingest.py::test_default_ids_unique_across_folders",
      "tests/test_ingest.py::test_source_names_are_relative_to_the_shared_folder"]),
    ("edit-fields", "edit a file whose rows carry extra fields", "every input field kept",
     ["tests/test_cli.py::test_edit_keeps_every_input_field"]),
    ("edit-nothing-usable", "edit a CSV renamed .jsonl, an empty file, rows without text",
     "exit 2, each bad row named, no output written",
     ["tests/test_cli.py::test_edit_with_nothing_usable_exits_2_and_writes_nothing"]),
    ("damaged-files", "a truncated .jsonl.gz, a corrupt gzip, a non-gzip .gz, UTF-16, a corrupt Parquet",
     "one whole-file quarantine row each (line 0), the good rows before the damage kept",
     ["tests/test_ingest.py::test_truncated_gzip_keeps_the_rows_before_the_damage",
      "tests/test_ingest.py::test_corrupt_gzip_and_not_gzip_are_whole_file_rows",
      "tests/test_ingest.py::test_wrong_encoding_is_one_whole_file_row",
      "tests/test_ingest.py::test_corrupt_parquet_keeps_the_row_groups_before_the_damage",
      "tests/test_ingest.py::test_parquet_row_with_invalid_utf8_is_its_own_row"]),
    ("row-deep-nesting", "a row whose field nests 1,000 levels deep (ingest, validate, edit)",
     "that row quarantined with file, line and reason (at most 32 levels); the rest measured "
     "or edited, exit 4",
     ["tests/test_ingest.py::test_a_row_nested_too_deep_is_quarantined_not_a_crash",
      "tests/test_commands.py::test_validate_quarantines_each_row_the_parser_refuses_and_measures_the_rest",
      "tests/test_cli.py::test_edit_skips_each_row_the_parser_refuses_naming_it"]),
    ("row-huge-int", "a row holding an integer of 5,000 digits; NaN, -Infinity, 1e999",
     "that row quarantined, naming file and line (at most 1,000 digits; JSON numbers only)",
     ["tests/test_ingest.py::test_numbers_json_cannot_hold_quarantine_their_row",
      "tests/test_commands.py::test_validate_quarantines_each_row_the_parser_refuses_and_measures_the_rest",
      "tests/test_cli.py::test_edit_skips_each_row_the_parser_refuses_naming_it"]),
    ("row-long-line", "a 32 MiB line, and one without a newline at the file's end",
     "that row quarantined unparsed, read past in bounded memory; the rows around it kept",
     ["tests/test_ingest.py::test_a_line_past_the_length_bound_is_quarantined_unparsed"]),
    ("row-nul-first-line", "a raw NUL on line 1 of a UTF-8 file; UTF-16 text after UTF-8 rows",
     "only that row quarantined; UTF-16/32 text ends the file as one line-0 row after the good rows",
     ["tests/test_ingest.py::test_a_nul_byte_costs_only_its_row_on_any_line",
      "tests/test_ingest.py::test_encoding_is_decided_line_by_line",
      "tests/test_ingest.py::test_wrong_encoding_is_one_whole_file_row",
      "tests/test_commands.py::test_validate_quarantines_each_row_the_parser_refuses_and_measures_the_rest"]),
    ("row-lone-surrogate", "a field holding a lone surrogate escape (\\ud800)",
     "that row quarantined as invalid UTF-8 (ingest; edit names it on stderr), not a crash",
     ["tests/test_ingest.py::test_a_lone_surrogate_in_a_field_quarantines_its_row",
      "tests/test_cli.py::test_edit_skips_each_row_the_parser_refuses_naming_it"]),
    ("row-one-token-doc", "a one-token document among good ones (validate, edit)",
     "kept, ppl null (never NaN), left out of the perplexity metrics: the gate passes; edit's "
     "JSON is JSON",
     ["tests/test_metrics.py::test_a_document_too_short_to_score_is_left_out_of_the_ppl_metrics_only",
      "tests/test_scoring.py::test_a_one_token_document_has_no_perplexity",
      "tests/test_commands.py::test_a_document_too_short_to_score_is_kept_and_left_out_of_the_ppl_metrics",
      "tests/test_cli.py::test_edit_writes_a_document_too_short_to_score_with_a_null_ppl"]),
    ("row-parquet-late-fields", "edit to Parquet: a field first seen after row 1,000, a field "
     "whose type changes, a lone surrogate",
     "every field kept (types over the whole input); a row that cannot be written named, exit 4",
     ["tests/test_cli.py::test_edit_to_parquet_keeps_every_field_and_names_a_row_it_cannot_write"]),
    ("row-non-regular-input", "a FIFO and /dev/zero as input of edit and ingest (file or glob)",
     "refused before reading, exit 2 naming the path",
     ["tests/test_ingest.py::test_inputs_that_are_not_regular_files_are_refused_before_reading",
      "tests/test_cli.py::test_edit_refuses_an_input_that_is_not_a_regular_file"]),
    ("validate-refused-input", "validate an input with no usable document",
     "exit 2 and its quarantine rows stored, the run says why",
     ["tests/test_commands.py::test_refused_input_keeps_its_quarantine_rows_and_the_run_says_why"]),
    ("kill-after-release-rename", "SIGKILL between a release's rename and its warehouse row",
     "the next run records the release from its manifest, the intent recorded before the rename",
     ["tests/test_crash.py::test_release_without_its_row_after_a_kill_is_recorded_by_the_next_run"]),
    ("release-forged-version", "copy a release to a new vNNNN folder, edit a document, rewrite its "
     "checksum and the manifest's version; then a run's recovery, `release verify`, a rerun",
     "left alone and named in a warning: never recorded, never reused as the release; verify "
     "FAILED (no warehouse record), exit 1",
     ["tests/test_release.py::test_a_forged_version_folder_is_left_alone_and_never_taken_for_the_release"]),
    ("release-unintended-recovery", "a release killed after its rename: recovered while its run "
     "is still RUNNING, with its manifest edited after the kill; a warehouse that cannot take "
     "the intent", "recorded only when its manifest is the intended one (run, version, sha256) "
     "and its run CRASHED; no folder renamed into place before its intent is recorded",
     ["tests/test_crash.py::test_a_killed_runs_release_is_recorded_only_once_its_run_is_crashed_and_as_intended",
      "tests/test_release.py::test_a_release_is_renamed_into_place_only_after_its_intent_is_recorded"]),
    ("release-symlinked-version", "a version folder and a release name folder under releases/ that "
     "are symlinks to a release outside the data root",
     "verify and push refused, exit 2 naming the link; recovery warns and records nothing; no "
     "release written through a link",
     ["tests/test_release.py::test_symlinked_release_folders_are_refused"]),
    ("release-writable-folders", "add, remove or rename a file in a released folder",
     "the version folder and every folder in it are read-only (0555), as its files (0444)",
     ["tests/test_release.py::test_released_folders_are_read_only_as_their_files"]),
    ("killed-run", "SIGKILL a run half way through its gate",
     "the next run marks it CRASHED (runs and Prefect); views and gate history leave it out; its "
     "report warns",
     ["tests/test_crash.py::test_killed_run_is_crashed_and_not_shown_as_a_run_by_the_views",
      "tests/test_crash.py::test_temporary_server_marks_a_killed_runs_flow_run_crashed"]),
    ("orphan-servers", "SIGKILL `semisynth run` while it scores", "no process of it survives "
     "(its temporary Prefect server ends with it)",
     ["tests/test_crash.py::test_sigkill_of_semisynth_run_leaves_no_process_behind"]),
    ("two-runs", "two runs (and metrics) on one data root",
     "the second waits lock_wait_s, then exits 3 naming the holder; free at once after a kill",
     ["tests/test_crash.py::test_run_and_metrics_exit_3_while_another_run_holds_the_data_root",
      "tests/test_crash.py::test_lock_second_holder_fails_after_its_wait_then_waits_out_the_first",
      "tests/test_crash.py::test_lock_of_a_killed_holder_is_free_at_once"]),
    ("query-blocks-writer", "a long query holds the warehouse while a run writes",
     "the writer waits (bounded), then a clear error, exit 3; never a traceback",
     ["tests/test_crash.py::test_writer_waits_out_a_reader_then_gives_a_clear_error"]),
    ("half-written-stage", "a stage's rows interrupted part way",
     "one transaction: all rows of a stage or none",
     ["tests/test_crash.py::test_rows_of_one_record_call_commit_together"]),
    ("bad-edit-options", "edit --top-k 0, --threshold -1, --beta 0, --beta -1",
     "exit 2 naming the option, nothing rewritten", [EDIT]),
    ("bad-config-values", "shard_docs: 0, threshold -1/0/1.5, top_k 0, beta 0/-1, ... in a config",
     "exit 2 naming file and key", [CFG, "tests/test_config.py::test_inconsistent_values_are_refused"]),
    ("yaml-syntax", "a config with a YAML syntax error", "an error naming file:line:column",
     ["tests/test_config.py::test_yaml_syntax_error_names_file_line_and_column"]),
    ("usage-data-root-file", "--data-root, a config's data_root, $SEMISYNTH_HOME: a regular "
     "file (or a path under one)", "exit 2 naming the option, key or variable and the path; no "
     "traceback",
     [f"{U}::test_a_data_root_that_is_a_file_is_refused_naming_where_it_was_given"]),
    ("usage-read-only-root", "validate and report on a data root the user may not write",
     "exit 2: the data root (validate) or the report's folder (report) is not writable, with "
     "what to do; report --out elsewhere works",
     [f"{U}::test_a_read_only_data_root_is_refused_by_validate_and_report"]),
    ("usage-report-out-folder", "report --out an existing folder",
     "exit 2 naming --out and the folder, nothing written into it",
     [f"{U}::test_report_out_an_existing_folder_is_refused"]),
    ("usage-unreachable-model", "--set prior.model=nonexistent/model (validate), edit --model, "
     "a model folder that is not there", "exit 2 at once naming prior.model (--model) and the "
     "model; the Hub is never asked; a model in the local HF cache is loaded from there",
     [f"{U}::test_a_model_that_is_not_on_disk_is_refused_at_once_without_the_hub",
      f"{U}::test_a_model_id_in_the_local_hugging_face_cache_is_loaded_from_there"]),
    ("usage-empty-data-root", '--data-root "" and data_root: ""',
     "exit 2 naming --data-root (data_root); the current folder is not taken, nothing written",
     [f"{U}::test_an_empty_data_root_is_refused_not_taken_as_the_current_folder"]),
    ("usage-gate-suite-path", "run --set gate.suite=a/b", "exit 2 at config validation naming "
     "gate.suite, before any run (no warehouse)",
     [f"{U}::test_an_unknown_gate_suite_is_refused_before_the_run_starts"]),
    ("usage-yaml-alias-bomb", "a 342-byte billion-laughs config, an alias that holds itself",
     "exit 2 naming file:line:column, in under 20 s and 1 GB (was 43 s, 3.2 GB)",
     [f"{U}::test_a_yaml_alias_bomb_is_refused_at_once_in_bounded_memory"]),
    ("usage-config-excerpts", "--set values of 100 KB: a name, a mix of 5,000 shares, a list, "
     "an override without '='", "each error quotes at most 80 characters of the value",
     [f"{U}::test_config_errors_quote_at_most_80_characters_of_a_value"]),
    ("usage-refused-run-status", "validate an input with no usable document; run a config whose "
     "source matches no file", "the run is REFUSED (not CRASHED) with why, out of the views, its "
     "report says so; the Prefect flow run is Failed named Refused",
     ["tests/test_commands.py::test_refused_input_keeps_its_quarantine_rows_and_the_run_says_why",
      f"{U}::test_a_flow_run_refused_for_its_input_says_so_in_the_warehouse_and_in_prefect"]),
    ("huge-document", "one 10 MB document without --max-tokens",
     "bounded by prior.max_doc_tokens with a warning naming it; progress per window; Ctrl-C stops it",
     ["tests/test_toedit.py::test_a_huge_document_is_bounded_and_named",
      "tests/test_toedit.py::test_score_shard_reports_window_progress_and_counts_truncation",
      "tests/test_toedit.py::test_ctrl_c_stops_a_long_document_between_windows"]),
    ("crash-exit-code", "an unexpected error inside a command (a clobbered warehouse file)",
     "exit 3 with its traceback, not the gate's 1",
     ["tests/test_cli.py::test_an_unexpected_error_exits_3_with_its_traceback_not_the_gates_1"]),
]


class Outcomes:
    """A pytest plugin that keeps each test's outcome by node id."""

    def __init__(self):
        self.by_node: dict[str, str] = {}

    def of(self, node: str) -> str:
        """A test's outcome; a test named without its parameters: every parametrization's
        (all passed, or the first that did not)."""
        if node in self.by_node:
            return self.by_node[node]
        ran = [v for n, v in self.by_node.items() if n.startswith(node + "[")]
        if not ran:
            return "not run"
        return next((v for v in ran if v != "passed"), "passed")

    def pytest_runtest_logreport(self, report):
        if report.failed:  # in setup, call or teardown
            self.by_node[report.nodeid] = "failed"
        elif report.skipped:
            self.by_node.setdefault(report.nodeid, "skipped")
        elif report.when == "call":
            self.by_node.setdefault(report.nodeid, "passed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run the cases whose name contains this")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c[0]]
    nodes = sorted({n for c in cases for n in c[3]})
    os.chdir(ROOT)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    outcomes = Outcomes()
    started = time.perf_counter()
    pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "-rN", *nodes], plugins=[outcomes])
    seconds = time.perf_counter() - started
    print()
    results = {}
    for name, tried, expected, case_nodes in cases:
        seen = {n: outcomes.of(n) for n in case_nodes}
        ok = all(v == "passed" for v in seen.values())
        results[name] = ok
        happened = expected if ok else "; ".join(f"{n.split('::')[-1]}: {v}"
                                                 for n, v in seen.items() if v != "passed")
        print(f"[{'OK' if ok else 'NOT OK'}] {name}: tried {tried} -> {happened}")
    print(json.dumps({"benchmark": "abuse", "cases": len(results), "ok": sum(results.values()),
                      "not_ok": [n for n, ok in results.items() if not ok],
                      "seconds": round(seconds, 1)}))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
