-- A finished operation is announced (pg_notify, for `Prefer: wait`) only if
-- a request is waiting for it. A notifying commit holds Postgres's
-- cluster-wide notify lock through its WAL flush, so every notifying commit
-- runs alone; most operations have no waiter, and their finish should
-- group-commit like any other transaction. A waiting request sets the flag
-- (under the row lock) before it waits; see api/src/waiters.rs.
ALTER TABLE operations ADD COLUMN notify_on_finish boolean NOT NULL DEFAULT false;
