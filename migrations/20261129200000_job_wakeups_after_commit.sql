-- apalis wakes its workers with an AFTER INSERT trigger that calls
-- pg_notify for every job row, inside the enqueueing transaction. A
-- notifying commit holds Postgres's cluster-wide notify lock through its WAL
-- flush, so every request's commit ran alone: 1.00 WAL flush per enqueue
-- instead of the group commit's ≈ 0.3, and the enqueue rate capped at the
-- disk's flush rate (README "Performance"). The wake-up now goes out after
-- the commit, coalesced and non-durable (core/src/notifier.rs); rarer
-- enqueues (operator retry, reconciler) notify in their own transaction
-- (core/src/queue.rs). Workers also poll, so a lost wake-up only delays.
DROP TRIGGER IF EXISTS notify_workers ON apalis.jobs;
