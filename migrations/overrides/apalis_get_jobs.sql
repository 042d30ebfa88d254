-- apalis's fetch as PL/pgSQL: the one definition of `apalis.get_jobs` that
-- idemq runs. `idemq_core::db::migrate` executes this file after apalis's and
-- our migrations on every run (core/src/db/apalis_overrides.rs), so a later
-- apalis migration that redefines the function does not stay in force.
--
-- Why: apalis 1.0's own definition (its migration
-- 20260902075949_remove_pl_in_get_jobs) is LANGUAGE sql with a
-- data-modifying CTE, which cannot be inlined: PostgreSQL 15 parses and plans
-- it again on every call (0.25–0.29 ms a call, pgbench, empty queue);
-- PL/pgSQL keeps its plan per connection (0.10 ms). Every worker calls it on
-- each wake-up and poll of each queue. Same signature, same statement, same
-- result: tests/it/queue_schema.rs compares the statement with apalis's.
--
-- One addition: a paused queue (table queue_pauses, docs/switches.md,
-- "Pausing a queue") hands out nothing. The check is one primary-key probe
-- inside the call the worker makes anyway: no extra round trip, and every
-- worker of the fleet obeys it from its next fetch.
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
    IF EXISTS (SELECT 1 FROM public.queue_pauses WHERE queue = v_job_type) THEN
        RETURN;
    END IF;
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
