-- idemq's own tables. apalis keeps its queue in schema `apalis` (set up by
-- PostgresStorage::setup, applied by the same `idemq migrate`).

CREATE TABLE principals (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is stored: a leaked table grants nothing.
CREATE TABLE api_tokens (
    token_sha256 bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
    principal_id uuid NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- The idempotency record and the operation it started are one row.
CREATE TABLE operations (
    id                    uuid PRIMARY KEY,
    principal_id          uuid NOT NULL REFERENCES principals (id),
    idempotency_key       text NOT NULL,
    fingerprint           bytea NOT NULL CHECK (length(fingerprint) = 32),
    kind                  text NOT NULL CHECK (kind IN ('invoice.mark_paid', 'application.approve',
                                                        'application.reject', 'meter_reading.record')),
    -- What the job needs to run: path parameters and the validated body.
    request               jsonb NOT NULL,
    status                text NOT NULL DEFAULT 'queued'
                          CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    queue                 text NOT NULL,
    job_id                text NOT NULL,
    attempts              integer NOT NULL DEFAULT 0,
    -- The final response, kept byte for byte so that a replay is verbatim.
    response_status       smallint,
    response_content_type text,
    response_body         text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    finished_at           timestamptz,
    -- Set when the operation finishes; queued or running records never expire.
    expires_at            timestamptz,
    UNIQUE (principal_id, idempotency_key),
    CHECK ((status IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)),
    CHECK ((status IN ('succeeded', 'failed')) = (response_status IS NOT NULL))
);
CREATE INDEX operations_expires_at_idx ON operations (expires_at) WHERE expires_at IS NOT NULL;
-- The reconciler and the ops view look for unfinished operations.
CREATE INDEX operations_unfinished_idx ON operations (created_at) WHERE status IN ('queued', 'running');

-- Business tables. Fixture contract: a row needs only its key columns.
CREATE TABLE invoices (
    id             text PRIMARY KEY,
    amount_cents   bigint NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
    currency       text NOT NULL DEFAULT 'EUR',
    status         text NOT NULL DEFAULT 'UNPAID' CHECK (status IN ('UNPAID', 'PAID')),
    payment_method text,
    paid_at        timestamptz,
    paid_by_operation uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE applications (
    id           text PRIMARY KEY,
    applicant    text NOT NULL DEFAULT '',
    room         text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED')),
    version      integer NOT NULL DEFAULT 1,
    note         text,
    reason       text,
    decided_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contracts (
    id             text PRIMARY KEY,
    application_id text UNIQUE REFERENCES applications (id),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE meter_readings (
    id           bigserial PRIMARY KEY,
    contract_id  text NOT NULL REFERENCES contracts (id),
    reading      numeric NOT NULL CHECK (reading >= 0),
    operation_id uuid,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meter_readings_contract_idx ON meter_readings (contract_id, id DESC);

-- One row per effect (refusals write none).
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    operation_id uuid NOT NULL,
    principal_id uuid,
    action       text NOT NULL,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}',
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_operation_idx ON audit_log (operation_id);
CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id);
