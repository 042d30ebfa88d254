-- Each attempt of an operation's job, for the ops console's story of an
-- operation (/ops/operations/{id}). Written by the job path's own statements:
-- the attempt's start statement inserts its row, the finishing statement of
-- the job transaction closes it; a failed attempt's error is written after
-- its rollback (the failure path only). A retry by an operator restarts the
-- numbering, so `attempt` is not unique: rows are ordered by `id`.
CREATE TABLE operation_attempts (
    id bigserial PRIMARY KEY,
    operation_id uuid NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    worker text,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    -- succeeded | refused | error | abandoned (its worker died or stopped
    -- answering) | exhausted | cancelled
    outcome text,
    error text
);
-- The job path closes an operation's open attempt, the page lists them, and
-- the cleanup's cascade finds them: all by operation.
CREATE INDEX operation_attempts_operation_idx ON operation_attempts (operation_id);
ALTER TABLE operation_attempts SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02);
