-- The warehouse contract: table names are fixed (DESIGN.md); one writer at a time (the
-- process holding the data root's lock).
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, flow_run_id VARCHAR, config_name VARCHAR, config_json VARCHAR,
  started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR, model VARCHAR, message VARCHAR,
  host VARCHAR, pid BIGINT);  -- the process that runs it: a RUNNING run whose pid is gone crashed
CREATE TABLE IF NOT EXISTS corpora (
  run_id VARCHAR, corpus VARCHAR, role VARCHAR, reference VARCHAR, origin VARCHAR,
  documents BIGINT, tokens BIGINT, shards INTEGER,  -- tokens: scored tokens, as doc_scores.tokens
  rows_in BIGINT, rows_ok BIGINT, rows_quarantined BIGINT);  -- ingest counts, file-backed corpora
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
  revised_tokens BIGINT);  -- positions chosen for a redraw (p > threshold)
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

-- migrations: columns added after a table first shipped
ALTER TABLE edits ADD COLUMN IF NOT EXISTS revised_tokens BIGINT;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS rows_in BIGINT;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS rows_ok BIGINT;
ALTER TABLE corpora ADD COLUMN IF NOT EXISTS rows_quarantined BIGINT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid BIGINT;

-- Views show finished runs only (COMPLETED, or FAILED by the gate): the rows of a run that
-- is still RUNNING, or CRASHED part way, are not a run's results. The tables keep them.
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
