-- The worker's fetch is one statement of its own (worker/src/fetch_gate.rs,
-- `FETCH_STARTING_ATTEMPTS`; docs/job-path.md "Waking and fetching"): apalis's
-- `get_jobs` statement word for word and the attempts' starts, where it was
-- `fetch_jobs_starting_attempts` calling `apalis.get_jobs`. Two PL/pgSQL
-- layers cost 0.4 ms of a 1 ms fetch at light load (README "Performance"),
-- and their statements took snapshots of their own: a job committed between
-- them was taken but its operation not yet visible, so its attempt was not
-- counted by the fetch (5 % of the jobs at 490 requests/s when the first
-- version of this statement still called `apalis.get_jobs`).
--
-- The paused-queue check (docs/switches.md, "Pausing a queue") that
-- `apalis.get_jobs` makes first: the fetch's limit is 0 when the queue is
-- paused. LANGUAGE sql and STABLE: inlined into the statement, no call.
CREATE FUNCTION queue_paused(p_queue text)
RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM public.queue_pauses WHERE queue = p_queue)
$$;

-- `fetch_jobs_starting_attempts` stays for a release: workers of the
-- previous one still call it during a rolling deploy.
COMMENT ON FUNCTION fetch_jobs_starting_attempts(text, text, integer, text) IS
    'Superseded by the worker''s own statement (worker/src/fetch_gate.rs); kept for workers of the previous release during a rolling deploy. Drop in a later release.';
