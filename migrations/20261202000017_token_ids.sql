-- Tokens get an id, so that `idemq token list` can name one and
-- `idemq token revoke <id>` revoke it without showing its secret or hash.
ALTER TABLE api_tokens ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_id_key UNIQUE (id);
