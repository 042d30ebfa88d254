-- Background duties (cleanup, reconciler) run once per tick for the whole
-- fleet: every worker process computes the same tick and tries to claim it;
-- the primary key lets exactly one claim win. A claim whose holder died is
-- taken over after its lease (see core/src/duty.rs).
CREATE TABLE duty_ticks (
    duty        text NOT NULL,
    tick        timestamptz NOT NULL,
    claimed_by  text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    result      jsonb,
    PRIMARY KEY (duty, tick)
);
