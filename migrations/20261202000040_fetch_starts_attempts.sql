-- The worker's fetch counts the attempts of the jobs it takes (issue 14,
-- lever 2; docs/job-path.md, "Waking and fetching" and "The job
-- transaction"): one statement a batch instead of a transaction of its own
-- (`start_attempt`) per job.
--
-- `fetch_jobs_starting_attempts` takes jobs exactly as `apalis.get_jobs`
-- does (it calls it: the pause, the order, `SKIP LOCKED`, the rows apalis and
-- its board see are unchanged), then, for each job's operation that is not
-- final and not locked by an attempt in flight (`SKIP LOCKED`: that attempt
-- may finish it, and the fetch must never wait), does what `start_attempt`
-- does: `running`, `attempts + 1`, the attempt's row opened by the worker,
-- an earlier row still open closed as `abandoned`. The job comes back with
-- its payload rewritten to carry the attempt so counted
-- (`{"operationId": …, "startedAttempt": n}`); a job whose operation was
-- skipped comes back as stored, and its handler starts its attempt itself
-- (`start_attempt`, as before).
--
-- The fetch commits asynchronously (the worker's queue pool), like the start
-- it replaces, and before any of its jobs runs: the count is committed
-- before the effect's transaction begins, so the bound holds across worker
-- crashes. What changes: a job counted by a fetch and then held in the
-- worker's buffer counts as an attempt if that worker dies before running it
-- (a graceful stop gives the count back: `give_back_attempts`).
--
-- The operation id is read from the payload by position (its JSON is ours:
-- `{"operationId":"<uuid>"…`), checked byte by byte so that the cast cannot
-- fail: a payload that is not ours (a job pushed by hand) gives NULL and is
-- skipped, never an error that would fail the whole fetch. (A pattern match
-- cost 29 µs a job, a JSON cast 1.3 µs but can throw; this, 0.4 µs.)
CREATE FUNCTION job_operation_id(p_job bytea)
RETURNS uuid
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE
        WHEN substring(p_job FROM 1 FOR 16) = '\x7b226f7065726174696f6e4964223a22'::bytea -- {"operationId":"
         AND substring(p_job FROM 53 FOR 1) = '\x22'::bytea                                 -- "
         AND translate(encode(substring(p_job FROM 17 FOR 36), 'escape'), '0123456789abcdef', '') = '----'
         AND encode(substring(p_job FROM 25 FOR 1) || substring(p_job FROM 30 FOR 1)
                    || substring(p_job FROM 35 FOR 1) || substring(p_job FROM 40 FOR 1), 'escape') = '----'
        THEN encode(substring(p_job FROM 17 FOR 36), 'escape')::uuid
    END
$$;

-- `p_worker`: the apalis worker (the queue loop) that takes the jobs;
-- `p_process`: the name the attempts' rows carry, the worker process's
-- instance name, as `start_attempt`'s rows do.
CREATE FUNCTION fetch_jobs_starting_attempts(p_worker text, p_queue text, p_count integer, p_process text)
RETURNS SETOF apalis.jobs
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    v_jobs apalis.jobs[];
    v_operations uuid[];
    v_started uuid[];
    v_attempts integer[];
BEGIN
    -- Two aggregates of one scan: the arrays are in the same order.
    SELECT array_agg(j), array_agg(job_operation_id(j.job)) INTO v_jobs, v_operations
    FROM apalis.get_jobs(p_worker, p_queue, p_count) j;
    IF v_jobs IS NULL THEN
        RETURN;
    END IF;
    -- Separate statements, not one joined to the fetched rows: the planner
    -- takes a set-returning function for 1,000 rows and scanned the whole
    -- operations table; `= ANY (array)` probes its primary key per job.
    WITH claimed AS (
        SELECT o.id
        FROM operations o
        WHERE o.id = ANY (v_operations)
          AND o.status IN ('queued', 'running')
        FOR UPDATE SKIP LOCKED
    ), started AS (
        UPDATE operations o
        SET status = 'running', attempts = o.attempts + 1, updated_at = now()
        FROM claimed
        WHERE o.id = claimed.id
        RETURNING o.id, o.attempts
    ), closed AS (
        -- Attempt 1 has no earlier row (an operator's retry restarts the
        -- numbering only on a final operation, whose rows are all closed).
        UPDATE operation_attempts a
        SET ended_at = now(), outcome = 'abandoned'
        FROM started s
        WHERE a.operation_id = s.id AND s.attempts > 1 AND a.ended_at IS NULL
    ), opened AS (
        INSERT INTO operation_attempts (operation_id, attempt, worker)
        SELECT s.id, s.attempts, p_process FROM started s
    )
    SELECT array_agg(s.id), array_agg(s.attempts) INTO v_started, v_attempts
    FROM started s;
    RETURN QUERY
    SELECT CASE WHEN s.attempts IS NULL THEN u.job
                ELSE convert_to(json_build_object('operationId', s.id, 'startedAttempt', s.attempts)::text,
                                'UTF8')
           END,
           u.id, u.job_type, u.status, u.attempts, u.max_attempts, u.run_at, u.last_result,
           u.lock_at, u.lock_by, u.done_at, u.priority, u.idempotency_key, u.metadata
    FROM ROWS FROM (unnest(v_jobs), unnest(v_operations))
         AS u(job, id, job_type, status, attempts, max_attempts, run_at, last_result, lock_at, lock_by,
              done_at, priority, idempotency_key, metadata, operation_id)
    LEFT JOIN unnest(v_started, v_attempts) AS s(id, attempts) ON s.id = u.operation_id;
END
$$;

-- A graceful stop puts back the jobs its worker fetched but never ran
-- (`reenqueue_abandoned`); their attempts, counted by the fetch, did not
-- happen: the count and the attempt's row are taken back, and the operation
-- is `queued` again. Only where nothing has moved since (the same attempt
-- number, still open, by this worker); an operation locked by an attempt in
-- flight elsewhere is left alone.
CREATE FUNCTION give_back_attempts(p_operations uuid[], p_attempts integer[], p_process text)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    v_count integer;
BEGIN
    WITH given AS (
        SELECT u.id, u.attempt
        FROM unnest(p_operations, p_attempts) AS u(id, attempt)
    ), claimed AS (
        SELECT o.id, o.attempts
        FROM operations o JOIN given g ON g.id = o.id AND g.attempt = o.attempts
        WHERE o.status = 'running'
          AND EXISTS (SELECT 1 FROM operation_attempts a
                      WHERE a.operation_id = o.id AND a.attempt = o.attempts
                        AND a.ended_at IS NULL AND a.worker = p_process)
        FOR UPDATE OF o SKIP LOCKED
    ), dropped AS (
        DELETE FROM operation_attempts a
        USING claimed c
        WHERE a.operation_id = c.id AND a.attempt = c.attempts AND a.ended_at IS NULL
    )
    UPDATE operations o
    SET status = 'queued', attempts = o.attempts - 1, updated_at = now()
    FROM claimed c
    WHERE o.id = c.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
