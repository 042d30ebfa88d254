-- The cleanup (worker/src/cleanup.rs) and autovacuum settings for the two
-- hot tables of a queue workload.
--
-- Why: `operations` and `apalis.jobs` are queue tables. Every row is
-- inserted, updated two or three times within seconds (queued → running →
-- finished; Pending → Running → Done), then deleted in bulk by the cleanup.
-- That makes dead tuples fast while the live row count stays roughly
-- constant. With the defaults (vacuum at 20 % dead, analyze at 10 % changed)
-- a table of a few million rows waits for hundreds of thousands of dead
-- tuples before it is vacuumed, the fetch and completion queries scan them
-- (apalis's fetch slows down measurably as `apalis.jobs` bloats), and after
-- a bulk delete the planner keeps stale statistics. So: vacuum at ~1–2 %
-- dead, analyze at ~2 % changed, a cost limit ten times the default (200)
-- so that one vacuum pass finishes quickly instead of trickling behind a
-- million-row cleanup, and insert-driven vacuums at the same rate so that
-- the visibility map stays current for index-only scans.

ALTER TABLE operations SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_limit = 2000
);

-- The queue itself churns hardest (each job row is updated on fetch, on
-- completion and by heartbeats' orphan sweeps): vacuum at 1 %.
ALTER TABLE apalis.jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000,
    autovacuum_vacuum_cost_limit = 2000
);

-- apalis.workers is tiny but each live worker rewrites its row every
-- heartbeat (every lease/5): vacuum it often, it costs nothing.
ALTER TABLE apalis.workers SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 500
);

-- The cleanup's scan of finished jobs older than the retention. apalis has
-- no index on done_at: without this the cleanup scans the whole queue
-- table each batch. The predicate is the cleanup query's, so the planner
-- can use the index; rows enter it only when a job finishes.
CREATE INDEX IF NOT EXISTS apalis_jobs_finished_idx ON apalis.jobs (done_at)
    WHERE status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts);
