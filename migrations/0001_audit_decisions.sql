-- The audit trail: one row per decision (or evaluation), hash-chained per
-- server instance. See acgs.domain.audit for how record_hash is computed;
-- request_json is kept as text, byte for byte, so that the hash can be checked.
CREATE TABLE audit_decisions (
    instance_id         text        NOT NULL,
    seq                 bigint      NOT NULL CHECK (seq > 0),
    decision_id         uuid        NOT NULL,
    decided_at          timestamptz NOT NULL,
    kind                text        NOT NULL,
    caller_id           text        NOT NULL,
    caller_role         text        NOT NULL,
    request_id          text        NOT NULL,
    tenant_id           text        NOT NULL,
    principal_id        text        NOT NULL,
    request_json        text        NOT NULL,
    effect              text        NOT NULL CHECK (effect IN ('ALLOW', 'DENY', 'ESCALATE')),
    violations          jsonb       NOT NULL,
    policy_revision     text        NOT NULL,
    constitutional_hash text        NOT NULL,
    cached              boolean     NOT NULL,
    latency_us          bigint      NOT NULL,
    escalation_id       text        NOT NULL,
    prev_hash           text        NOT NULL,
    record_hash         text        NOT NULL,
    shipped_at          timestamptz NOT NULL DEFAULT now(),
    -- The shipper inserts with ON CONFLICT (instance_id, seq) DO NOTHING: exactly once.
    PRIMARY KEY (instance_id, seq)
);

-- Not unique on purpose: a duplicated decision id must never wedge the shipper.
CREATE INDEX audit_decisions_decision_id ON audit_decisions (decision_id);

-- ListDecisions pages in (decided_at, instance_id, seq) order, optionally filtered.
CREATE INDEX audit_decisions_time ON audit_decisions (decided_at, instance_id, seq);
CREATE INDEX audit_decisions_tenant ON audit_decisions (tenant_id, decided_at, instance_id, seq);
CREATE INDEX audit_decisions_principal
    ON audit_decisions (principal_id, decided_at, instance_id, seq);
CREATE INDEX audit_decisions_revision
    ON audit_decisions (policy_revision, decided_at, instance_id, seq);
CREATE INDEX audit_decisions_effect ON audit_decisions (effect, decided_at, instance_id, seq);
