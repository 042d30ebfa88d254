-- Fleet-wide rate limits (IDEMQ_RATE_LIMIT_SCOPE=fleet): one GCRA state per
-- principal and route class, shared by every API process. A process leases
-- a slice of the budget with one upsert (api/src/rate_limit/fleet.rs) and
-- spends it locally, so a request costs a round trip only once per slice.
CREATE TABLE rate_limit_budgets (
    principal_id uuid NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    class        text NOT NULL CHECK (class IN ('sensitive', 'read')),
    -- GCRA's theoretical arrival time, on the database clock: the budget is
    -- whole again at `tat`; one more request is due at `tat - (burst - 1) * interval`.
    tat          timestamptz NOT NULL,
    -- What the last lease granted (0 = refused), read back by RETURNING.
    granted      integer NOT NULL,
    PRIMARY KEY (principal_id, class)
);
-- Small rows updated in place all day: room for HOT updates.
ALTER TABLE rate_limit_budgets SET (fillfactor = 50);
