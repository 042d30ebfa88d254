-- An operation is updated in place twice before it finishes: the request's
-- `Prefer: wait` flag and the job's start (status queued → running, the
-- attempt count). Those can be HOT updates (no new index entries, no index
-- page touched) only if no indexed column changes and the page has room.
-- The unfinished-operations index named `status` in its predicate, which
-- makes every status change a non-HOT update; `finished_at IS NULL` selects
-- the same rows (a CHECK ties finished_at to a final status) and does not
-- change until the finish. Free space per page leaves room for the new
-- versions.
DROP INDEX IF EXISTS operations_unfinished_idx;
CREATE INDEX operations_unfinished_idx ON operations (created_at) WHERE finished_at IS NULL;
ALTER TABLE operations SET (fillfactor = 80);
