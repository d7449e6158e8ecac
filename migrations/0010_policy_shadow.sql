-- Shadow evaluation of a candidate policy version on live traffic, and the
-- record of automatic rollbacks. See acgs.service_layer.policy_shadow and
-- acgs.service_layer.policy_watch.
--
-- policy_shadow is one row: the candidate every server shadows (candidate_revision
-- NULL: none), the share of decisions sampled, how many examples each server keeps
-- per transition, and a generation bumped on every start and stop (a server's
-- report belongs to one generation). Changes NOTIFY acgs_policy_state, the
-- channel of activations, so servers pick them up in the same reconciliation.
-- Each server upserts its own report row about once a second while shadowing.
CREATE TABLE policy_shadow (
    id                  boolean          PRIMARY KEY DEFAULT true CHECK (id),  -- a singleton
    candidate_revision  text             REFERENCES policy_versions (revision),
    sample              double precision NOT NULL CHECK (sample > 0 AND sample <= 1),
    examples            integer          NOT NULL CHECK (examples >= 0),
    generation          bigint           NOT NULL DEFAULT 1,
    changed_by          text             NOT NULL,
    changed_at          timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE policy_shadow_reports (
    instance_id         text        PRIMARY KEY,
    generation          bigint      NOT NULL,
    candidate_revision  text        NOT NULL,
    live_revision       text        NOT NULL,
    evaluated           bigint      NOT NULL,
    dropped             bigint      NOT NULL,
    counts              jsonb       NOT NULL,  -- {"ALLOW->DENY": n, ...}
    examples            jsonb       NOT NULL,  -- {"ALLOW->DENY": [{...}, ...], ...}
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Automatic rollbacks (a version that made a server fail safe too often): who
-- rolled back what, and why. The audit-visible trace besides the incident.
CREATE TABLE policy_rollbacks (
    id               bigserial   PRIMARY KEY,
    from_revision    text        NOT NULL,
    to_revision      text        NOT NULL,
    instance_id      text        NOT NULL,
    reason           text        NOT NULL,
    rolled_back_at   timestamptz NOT NULL DEFAULT now()
);
