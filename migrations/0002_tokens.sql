-- Bearer tokens of callers (see acgs.domain.tokens). Only the SHA-256 of each
-- token is kept; the token itself is shown once, when it is created. A token
-- is revoked by setting revoked_at; rows are never deleted, so the audit
-- trail's caller ids stay resolvable to a name and a role.
CREATE TABLE auth_tokens (
    id          text        PRIMARY KEY CHECK (id ~ '^acgs_[0-9a-f]{16}$'),
    name        text        NOT NULL CHECK (name <> ''),
    role        text        NOT NULL,
    secret_hash text        NOT NULL CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    revoked_at  timestamptz
);
