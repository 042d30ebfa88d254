-- Pausing a queue (README "Pausing a queue"): while a row names a queue,
-- apalis.get_jobs hands out none of its jobs (migrations/overrides/
-- apalis_get_jobs.sql), on every worker of the fleet at its next fetch. The
-- API keeps accepting and recording. A table, so the pause outlives restarts.
CREATE TABLE queue_pauses (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL
);

-- Who paused and resumed which queue, when (audit_log is per operation).
CREATE TABLE queue_pause_log (
    id     bigserial PRIMARY KEY,
    queue  text NOT NULL,
    action text NOT NULL CHECK (action IN ('queue.pause', 'queue.resume')),
    by     text NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);
