-- The warehouse contract: table names are fixed (DESIGN.md); one writer at a time (the
-- process holding the data root's lock).
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, flow_run_id VARCHAR, config_name VARCHAR, config_json VARCHAR,
  started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR, model VARCHAR, message VARCHAR,
  host VARCHAR, pid BIGINT);  -- the process that runs it: a RUNNING run whose pid is gone crashed
CREATE TABLE IF NOT EXISTS corpora (
  run_id VARCHAR, corpus VARCHAR, role VARCHAR, reference VARCHAR, origin VARCHAR,
  documents BIGINT, tokens BIGINT, shards INTEGER,  -- tokens: scored tokens, as doc_scores.tokens
  rows_in BIGINT, rows_ok BIGINT, rows_quarantined BIGINT,  -- ingest counts, ingested corpora
  -- a corpus read from a Hugging Face dataset (else NULL): its path, configuration, split and
  -- revision (the commit the Hub resolved it to; NULL for a local folder)
  dataset_path VARCHAR, dataset_name VARCHAR, dataset_split VARCHAR, dataset_revision VARCHAR);
CREATE TABLE IF NOT EXISTS shards (
  shard_hash VARCHAR, corpus VARCHAR, source VARCHAR, path VARCHAR, documents BIGINT,
  first_seen_run VARCHAR);
CREATE TABLE IF NOT EXISTS quarantine (
  run_id VARCHAR, corpus VARCHAR, file VARCHAR, line BIGINT, reason VARCHAR, excerpt VARCHAR);
CREATE TABLE IF NOT EXISTS doc_scores (
  run_id VARCHAR, corpus VARCHAR, shard_hash VARCHAR, doc_id VARCHAR, doc_hash VARCHAR,
  tokens BIGINT, nll_sum DOUBLE, ppl DOUBLE);
CREATE TABLE IF NOT EXISTS edits (
  run_id VARCHAR, corpus VARCHAR, source_corpus VARCHAR, shard_hash VARCHAR, doc_id VARCHAR,
  tokens BIGINT, edited_tokens BIGINT, dropped_tokens BIGINT, strategy VARCHAR,
  threshold DOUBLE, top_k INTEGER, beta DOUBLE, seed BIGINT,
  revised_tokens BIGINT,  -- positions chosen for a redraw (ToEdit: p > threshold)
  -- the strategy's parameters as it applied them, JSON (threshold, top_k and beta above:
  -- the parameter of that name where the strategy has one, else NULL)
  params VARCHAR);
CREATE TABLE IF NOT EXISTS metrics (
  run_id VARCHAR, corpus VARCHAR, reference VARCHAR, comparison VARCHAR, metric VARCHAR,
  n INTEGER, budget BIGINT, value DOUBLE, ci_low DOUBLE, ci_high DOUBLE);
CREATE TABLE IF NOT EXISTS ppl_histograms (
  run_id VARCHAR, corpus VARCHAR, bin_low DOUBLE, bin_high DOUBLE, documents BIGINT);
CREATE TABLE IF NOT EXISTS ngram_top (
  run_id VARCHAR, corpus VARCHAR, n INTEGER, rank INTEGER, ngram VARCHAR, count BIGINT,
  share DOUBLE);
CREATE TABLE IF NOT EXISTS validations (
  run_id VARCHAR, corpus VARCHAR, suite VARCHAR, expectation VARCHAR, metric VARCHAR,
  observed DOUBLE, threshold VARCHAR, success BOOLEAN, validated_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS releases (
  name VARCHAR, version VARCHAR, run_id VARCHAR, corpus VARCHAR, path VARCHAR,
  manifest_sha256 VARCHAR, documents BIGINT, tokens BIGINT, created_at TIMESTAMP);
-- A release about to be renamed into place, recorded before the rename: a version folder
-- found later without its `releases` row (its run killed in between) is recorded only if a
-- run recorded this intent for it, with the sha256 of exactly its manifest.
CREATE TABLE IF NOT EXISTS release_intents (
  name VARCHAR, version VARCHAR, run_id VARCHAR, corpus VARCHAR, path VARCHAR,
  manifest_sha256 VARCHAR, recorded_at TIMESTAMP);
-- Copies of releases (`semisynth release push`): one row per push that ended with every
-- file of the copy read back and matching its manifest. copied: false when the destination
-- already held this very copy (checked, nothing written); run_id: NULL for the command.
CREATE TABLE IF NOT EXISTS pushes (
  name VARCHAR, version VARCHAR, destination VARCHAR, files BIGINT, bytes BIGINT,
  manifest_sha256 VARCHAR, pushed_at TIMESTAMP, copied BOOLEAN, run_id VARCHAR, host VARCHAR);

-- migrations: columns added after a table first shipped
ALTER TABLE edits ADD COLUMN IF NOT EXISTS revised_tokens BIGINT;
ALTER TABLE edits ADD COLUMN IF NOT EXISTS params VARCHAR;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS rows_in BIGINT;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS rows_ok BIGINT;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS rows_quarantined BIGINT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid BIGINT;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS dataset_path VARCHAR;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS dataset_name VARCHAR;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS dataset_split VARCHAR;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS dataset_revision VARCHAR;

-- Views show finished runs only (COMPLETED, or FAILED by the gate): the rows of a run that
-- is still RUNNING, CRASHED part way, or REFUSED for its input are not a run's results.
-- The tables keep them.
CREATE OR REPLACE VIEW finished_runs AS
  SELECT * FROM runs WHERE status IN ('COMPLETED', 'FAILED');
CREATE OR REPLACE VIEW latest_metrics AS
  SELECT m.* FROM metrics m
  JOIN (SELECT corpus, max(r.started_at) AS started_at FROM metrics mm
        JOIN finished_runs r USING (run_id) GROUP BY corpus) last USING (corpus)
  JOIN finished_runs r ON r.run_id = m.run_id AND r.started_at = last.started_at;
CREATE OR REPLACE VIEW metric_trend AS
  SELECT r.started_at, m.run_id, m.corpus, m.comparison, m.metric, m.n, m.budget, m.value
  FROM metrics m JOIN finished_runs r USING (run_id) ORDER BY m.corpus, m.metric, r.started_at;
CREATE OR REPLACE VIEW gate_history AS
  SELECT r.started_at, v.run_id, v.corpus, v.suite, bool_and(v.success) AS passed,
         count(*) FILTER (WHERE NOT v.success) AS failed_expectations,
         string_agg(CASE WHEN NOT v.success THEN v.expectation END, ', ') AS failing
  FROM validations v JOIN finished_runs r USING (run_id)
  GROUP BY ALL ORDER BY r.started_at, v.corpus;
-- Every release (a release folder is whole, whatever became of its run), with its run's status.
CREATE OR REPLACE VIEW release_lineage AS
  SELECT rl.name, rl.version, rl.created_at, rl.run_id, rl.corpus, c.reference,
         r.model, rl.documents, rl.tokens, rl.path, r.status AS run_status
  FROM releases rl LEFT JOIN runs r USING (run_id)
  LEFT JOIN corpora c ON c.run_id = rl.run_id AND c.corpus = rl.corpus;
-- Where each release was copied to, with whether the copy's manifest is the release's own.
CREATE OR REPLACE VIEW release_pushes AS
  SELECT p.name, p.version, p.destination, p.pushed_at, p.copied, p.files, p.bytes,
         rl.corpus, rl.run_id AS release_run_id, rl.documents,
         p.manifest_sha256 = rl.manifest_sha256 AS same_manifest, p.host
  FROM pushes p
  LEFT JOIN (SELECT name, version, arg_min(corpus, created_at) AS corpus,
                    arg_min(run_id, created_at) AS run_id,
                    arg_min(documents, created_at) AS documents,
                    arg_min(manifest_sha256, created_at) AS manifest_sha256
             FROM releases GROUP BY name, version) rl USING (name, version);

-- The collapse experiment (flow collapse_experiment): one row per (arm, seed, eval corpus).
CREATE TABLE IF NOT EXISTS experiment_results (
  experiment VARCHAR, run_id VARCHAR, arm VARCHAR, seed BIGINT, synthetic_share DOUBLE,
  edit_threshold DOUBLE, selection VARCHAR,  -- NULL: not edited / not selected
  train_tokens BIGINT, eval_corpus VARCHAR, eval_tokens BIGINT, eval_ppl DOUBLE,
  steps INTEGER, parameters BIGINT, vocab_size INTEGER, final_train_loss DOUBLE,
  train_seconds DOUBLE, cached BOOLEAN, result_key VARCHAR, model VARCHAR);
-- what each arm's stream is made of: one row per (arm, source pool)
CREATE TABLE IF NOT EXISTS experiment_arms (
  experiment VARCHAR, run_id VARCHAR, arm VARCHAR, source VARCHAR, documents BIGINT,
  tokens BIGINT, cut_documents INTEGER, stream_sha VARCHAR);

-- Mean held-out perplexity over seeds with a 95% Student-t interval (normal quantile
-- beyond 30 degrees of freedom; no interval from one seed), per run.
CREATE OR REPLACE VIEW experiment_summary_by_run AS
  WITH t(df, q) AS (VALUES (1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571),
      (6, 2.447), (7, 2.365), (8, 2.306), (9, 2.262), (10, 2.228), (11, 2.201), (12, 2.179),
      (13, 2.160), (14, 2.145), (15, 2.131), (16, 2.120), (17, 2.110), (18, 2.101),
      (19, 2.093), (20, 2.086), (21, 2.080), (22, 2.074), (23, 2.069), (24, 2.064),
      (25, 2.060), (26, 2.056), (27, 2.052), (28, 2.048), (29, 2.045), (30, 2.042)),
  per_arm AS (
    SELECT experiment, run_id, arm, eval_corpus, any_value(synthetic_share) AS synthetic_share,
           any_value(edit_threshold) AS edit_threshold, any_value(selection) AS selection,
           any_value(train_tokens) AS train_tokens, count(DISTINCT seed) AS seeds,
           avg(eval_ppl) AS mean_ppl, stddev_samp(eval_ppl) AS sd_ppl
    FROM experiment_results GROUP BY experiment, run_id, arm, eval_corpus)
  SELECT p.experiment, p.arm, p.synthetic_share, p.seeds, p.mean_ppl,
         p.mean_ppl - coalesce(t.q, 1.96) * p.sd_ppl / sqrt(p.seeds) AS ci_low,
         p.mean_ppl + coalesce(t.q, 1.96) * p.sd_ppl / sqrt(p.seeds) AS ci_high,
         p.eval_corpus, p.edit_threshold, p.selection, p.train_tokens, p.sd_ppl, p.run_id
  FROM per_arm p LEFT JOIN t ON t.df = p.seeds - 1;
-- the latest run of each experiment
CREATE OR REPLACE VIEW experiment_summary AS
  SELECT s.* FROM experiment_summary_by_run s
  JOIN (SELECT e.experiment, arg_max(e.run_id, r.started_at) AS run_id
        FROM experiment_results e JOIN finished_runs r USING (run_id) GROUP BY e.experiment) last
    USING (experiment, run_id);
