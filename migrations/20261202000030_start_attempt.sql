-- The attempt's start (docs/job-path.md, "The job transaction"): marks the
-- operation `running`, counts the attempt, closes an earlier attempt row
-- still open as `abandoned` (its worker died mid-attempt) and opens this
-- one's; nothing if the operation is final or gone.
--
-- Called in the message that opens the job's transaction
-- (`core/src/job.rs`, `OPEN_ATTEMPT`): a multi-statement simple query, which
-- takes no parameters and no prepared statement, so a statement written in
-- it is parsed and planned again on every attempt. PL/pgSQL keeps the plans
-- of its statements per connection (like `apalis.get_jobs`, migration
-- 20261129200001), and three plain statements plan more cheaply than one
-- data-modifying CTE. Measured with pgbench (one client, 20,000 operations,
-- server CPU per opening: BEGIN, two SET LOCALs, the start, COMMIT; machine
-- loaded): 445–545 µs with the CTE statement written in the message,
-- 360–410 µs with it in a function, 310–355 µs with this function; the CTE
-- as a prepared statement on its own: 275–340 µs.
CREATE FUNCTION start_attempt(p_operation uuid, p_worker text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    v_attempt integer;
BEGIN
    UPDATE operations SET status = 'running', attempts = attempts + 1, updated_at = now()
    WHERE id = p_operation AND status IN ('queued', 'running')
    RETURNING attempts INTO v_attempt;
    IF FOUND THEN
        UPDATE operation_attempts SET ended_at = now(), outcome = 'abandoned'
        WHERE operation_id = p_operation AND ended_at IS NULL;
        INSERT INTO operation_attempts (operation_id, attempt, worker)
        VALUES (p_operation, v_attempt, p_worker);
    END IF;
END
$$;
