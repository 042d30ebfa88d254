-- Indexes the queue's hot queries need (issue 5). Measured with 200,000 old
-- `Done` rows in apalis.jobs (PostgreSQL 15, 2 cores); see README
-- "Operations".
--
-- apalis's fetch (`apalis.get_jobs`) uses its partial index on pending jobs
-- and the acknowledgement goes by primary key: neither grows with finished
-- rows (≈10 ms and ≈2.5 ms for a batch of 50, with or without them).
--
-- The orphan sweep does: every heartbeat of every queue loop in every worker
-- process (every lease/5) runs `reenqueue_orphaned`, which joins running or
-- queued jobs to silent workers. No index serves "running or queued", and
-- finished jobs keep their `lock_by`, so it scanned the whole table: 25–50 ms
-- per heartbeat at 200k rows, growing with the table. This partial index
-- holds only the jobs in flight: 0.2–1.6 ms, whatever the table's size.
CREATE INDEX IF NOT EXISTS idemq_apalis_jobs_in_flight_idx ON apalis.jobs (lock_by)
    WHERE status IN ('Running', 'Queued');
