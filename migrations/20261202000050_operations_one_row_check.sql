-- The rules of an operations row, unchanged, in one CHECK that calls a
-- PL/pgSQL function instead of five CHECKs written out. Postgres rebuilds a
-- table's CHECK expressions from their stored node text for every statement
-- that writes the table (ExecConstraints: stringToNode, expression_planner),
-- and a text constant's node text spells each of its bytes as a number: the
-- five cost 30 µs per insert or update of an operation on this machine, 7–8 %
-- of Postgres's CPU in `idemq bench payments`. The call's node text is short
-- and PL/pgSQL keeps the compiled function per connection: 12 µs a write.
CREATE FUNCTION operation_row_is_valid(
    fingerprint bytea, kind text, status text, finished_at timestamptz, response_status smallint
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce(
        length(fingerprint) = 32
        AND kind IN ('invoice.mark_paid', 'application.approve', 'application.reject', 'meter_reading.record')
        AND status IN ('queued', 'running', 'succeeded', 'failed')
        -- a finished row has a response and a finish time, an unfinished one neither
        AND (status IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)
        AND (status IN ('succeeded', 'failed')) = (response_status IS NOT NULL),
        false);
END
$$;

ALTER TABLE operations
    DROP CONSTRAINT operations_fingerprint_check,
    DROP CONSTRAINT operations_kind_check,
    DROP CONSTRAINT operations_status_check,
    DROP CONSTRAINT operations_check,
    DROP CONSTRAINT operations_check1,
    ADD CONSTRAINT operations_row_valid
        CHECK (operation_row_is_valid(fingerprint, kind, status, finished_at, response_status)) NOT VALID;
-- The rows already obeyed the same rules; validating marks the constraint
-- as holding for them too (one pass over the table).
ALTER TABLE operations VALIDATE CONSTRAINT operations_row_valid;
