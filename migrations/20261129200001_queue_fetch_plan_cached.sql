-- apalis's fetch, `SELECT * FROM apalis.get_jobs(worker, queue, n)`, calls a
-- LANGUAGE sql function whose body (a data-modifying CTE) cannot be inlined:
-- PostgreSQL 15 parses and plans such a body again on every call. Measured
-- with pgbench (prepared, one client, empty queue): 0.25–0.29 ms a call as
-- shipped, 0.10 ms as PL/pgSQL, which keeps its plan per connection. Every
-- worker calls it on each wake-up and poll of each queue. Same signature,
-- same statement, same result; only the language differs. (apalis-postgres
-- is pinned in Cargo.lock; its migration `remove_pl_in_get_jobs` made it SQL.)
CREATE OR REPLACE FUNCTION apalis.get_jobs(
    worker_id TEXT,
    v_job_type TEXT,
    v_job_count INTEGER DEFAULT 5
)
RETURNS SETOF apalis.jobs
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    RETURN QUERY
    WITH jobs AS (
        SELECT id
        FROM apalis.jobs
        WHERE
            (
                status = 'Pending'
                OR (
                    status = 'Failed'
                    AND attempts < max_attempts
                )
            )
            AND run_at < now()
            AND job_type = v_job_type
        ORDER BY priority DESC, run_at ASC
        LIMIT v_job_count
        FOR UPDATE SKIP LOCKED
    )
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = worker_id,
        lock_at = now()
    FROM jobs
    WHERE j.id = jobs.id
    RETURNING j.*;
END;
$$;

-- apalis's first migration created two indexes that later ones duplicate:
-- `unique_job_id` (the primary key already is `id`) and `lidx` on lock_by
-- (`idx_apalis_jobs_lock_by` is the same). A job row is written four times
-- (insert, fetch, start, ack) and most writes change an indexed or
-- predicate column, so each duplicate costs up to four index entries a job.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
