-- apalis's unique (job_type, idempotency_key) serves its own push-time
-- deduplication, which idemq never uses: the key semantics live in
-- `operations`, and every job is pushed with a NULL key (NULLs are
-- distinct, so the index never refused anything). A job row is written four
-- times and each write put an entry in it.
DROP INDEX IF EXISTS apalis.idx_jobs_idempotency_key;
