-- The record statement (core/src/idempotency.rs) no longer locks the
-- principal's row. A foreign key from operations.principal_id made every
-- insert take FOR KEY SHARE on that row; requests of one principal run
-- concurrently, so each lock rewrote the row's xmax into a new MultiXact
-- (a WAL record and a write of the principals page per request, all
-- requests of the principal queuing on that one page). Measured: the key
-- check alone took 0.085 ms a request in `idemq bench payments`, beside the
-- record's own 0.43 ms (README, "What the profile showed").
--
-- What the key guarded stays guarded, from the other side: a principal that
-- has operations cannot be deleted (this trigger, the same error class as the
-- key's, 23503). idemq itself never deletes principals (tokens are revoked
-- instead), and an operation's principal comes from an authenticated token
-- lookup, so only a concurrent manual DELETE could slip past the trigger.
ALTER TABLE operations DROP CONSTRAINT IF EXISTS operations_principal_id_fkey;

CREATE FUNCTION principals_keep_operations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM operations WHERE principal_id = OLD.id) THEN
        RAISE EXCEPTION 'principal % still has operations', OLD.name
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'Revoke its tokens instead (idemq token revoke); operations expire on their own.';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER principals_keep_operations
    BEFORE DELETE ON principals
    FOR EACH ROW EXECUTE FUNCTION principals_keep_operations();
