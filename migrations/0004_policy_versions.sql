-- Policy versions and the fleet that serves them. See acgs.service_layer.policy_admin.
--
-- A version is immutable and named by its content: revision is the
-- PolicyBundle revision (a digest of the modules, data and manifest), so
-- storing the same policy twice is a no-op. policy_state is one row: the
-- revision every server should serve (desired_revision), bumped generation on
-- every activation, and the revision it replaced (the target of a rollback).
-- Each server upserts its own instances row about once a second.
CREATE TABLE policy_versions (
    revision        text        PRIMARY KEY,
    name            text        NOT NULL,
    version         text        NOT NULL,
    modules         jsonb       NOT NULL,  -- {"module/name.rego": "source", ...}
    data_json       text        NOT NULL,  -- canonical JSON, byte for byte
    manifest_json   text        NOT NULL,  -- canonical JSON, byte for byte
    signature       text        NOT NULL DEFAULT '',  -- base64 Ed25519, '' when unsigned
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX policy_versions_created ON policy_versions (created_at);

CREATE TABLE policy_state (
    id                 boolean     PRIMARY KEY DEFAULT true CHECK (id),  -- a singleton
    desired_revision   text        NOT NULL REFERENCES policy_versions (revision),
    previous_revision  text        REFERENCES policy_versions (revision),
    generation         bigint      NOT NULL DEFAULT 1,
    activated_by       text        NOT NULL,
    activated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE policy_instances (
    instance_id      text        PRIMARY KEY,
    address          text        NOT NULL,
    active_revision  text        NOT NULL,
    serving          boolean     NOT NULL,
    last_heartbeat   timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz NOT NULL DEFAULT now()
);
