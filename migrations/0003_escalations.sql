-- Escalations: decisions (and incidents) handed to humans. See acgs.domain.escalation.
--
-- A row is created from the audit trail: the server that escalates a decision
-- journals an "escalation opened" record next to the decision's own record
-- (both fsynced before the answer), and the shipper that copies the journal
-- to audit_decisions calls acgs_open_escalation() in the same transaction.
-- Transitions (acknowledge, approve, deny, expire) are made by the servers
-- directly, under a row lock. Every change appends one row to
-- escalation_events, whose seq is the cursor of acgs.v1.Escalations/Watch.
CREATE TABLE escalations (
    id                   uuid        PRIMARY KEY,
    decision_id          uuid,        -- NULL for an incident that answered no decision
    reason               text        NOT NULL,
    severity             text        NOT NULL
                         CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    message              text        NOT NULL,
    state                text        NOT NULL DEFAULT 'open'
                         CHECK (state IN ('open', 'acknowledged', 'approved', 'denied', 'expired')),
    requester_id         text        NOT NULL,  -- the authenticated caller of the decision
    requester_role       text        NOT NULL,
    principal_id         text        NOT NULL,  -- the decision's subject
    tenant_id            text        NOT NULL,
    request_id           text        NOT NULL,
    effect               text        NOT NULL CHECK (effect IN ('ALLOW', 'DENY', 'ESCALATE')),
    violations           jsonb       NOT NULL,
    policy_revision      text        NOT NULL,
    instance_id          text        NOT NULL,
    constitutional_hash  text        NOT NULL,
    required_approvals   integer     NOT NULL CHECK (required_approvals BETWEEN 1 AND 100),
    approvals            jsonb       NOT NULL DEFAULT '[]',
    dedup_key            text,
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    acknowledged_by      text,
    acknowledged_at      timestamptz,
    resolved_by          text,
    resolved_at          timestamptz,
    resolution_comment   text        NOT NULL DEFAULT '',
    approval_decision_id uuid,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    last_event_seq       bigint      NOT NULL DEFAULT 0
);

CREATE INDEX escalations_created ON escalations (created_at, id);
CREATE INDEX escalations_tenant ON escalations (tenant_id, created_at, id);
CREATE INDEX escalations_decision ON escalations (decision_id);
CREATE INDEX escalations_due ON escalations (expires_at) WHERE state IN ('open', 'acknowledged');
-- At most one pending escalation per deduplicated incident (a misconfigured
-- client sending the wrong constitutional hash to every server is one incident).
CREATE UNIQUE INDEX escalations_dedup ON escalations (dedup_key)
    WHERE dedup_key IS NOT NULL AND state IN ('open', 'acknowledged');

CREATE TABLE escalation_events (
    seq           bigserial   PRIMARY KEY,
    escalation_id uuid        NOT NULL REFERENCES escalations (id),
    kind          text        NOT NULL,  -- opened, acknowledged, approval, approved, denied, expired
    actor_id      text        NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    snapshot      jsonb       NOT NULL   -- the escalation row just after the change
);

-- Record a change of escalation ``esc`` and wake the watchers. Every writer of
-- events holds advisory lock 0x4AC6E5C1 until it commits, so seqs become
-- visible in seq order: a watcher resuming after seq N can never miss a
-- smaller seq that committed later.
CREATE FUNCTION acgs_escalation_event(esc uuid, event text, actor text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1254548929);  -- 0x4AC6E5C1
    INSERT INTO escalation_events (escalation_id, kind, actor_id, snapshot)
        SELECT e.id, event, actor, to_jsonb(e) FROM escalations e WHERE e.id = esc
        RETURNING seq INTO s;
    IF s IS NULL THEN
        RAISE EXCEPTION 'no escalation %', esc;
    END IF;
    UPDATE escalations SET last_event_seq = s WHERE id = esc;
    PERFORM pg_notify('acgs_escalation_events', s::text);
    RETURN s;
END
$$;

-- Create the escalation ``spec`` describes (keys are column names), once:
-- shipping the same journal record again, or a second pending incident with
-- the same dedup_key, changes nothing. Called by the audit shipper for every
-- "opened" record it ships, and directly for incidents the journal refused.
-- A spec that does not fit the table is reported (WARNING) and skipped rather
-- than raised: it must never wedge the audit shipper, whose transaction this
-- runs in. Its record stays in audit_decisions, naming the escalation id.
CREATE FUNCTION acgs_open_escalation(spec jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    opened uuid;
BEGIN
    PERFORM pg_advisory_xact_lock(1254548929);
    BEGIN
    INSERT INTO escalations (
        id, decision_id, reason, severity, message, requester_id, requester_role,
        principal_id, tenant_id, request_id, effect, violations, policy_revision,
        instance_id, constitutional_hash, required_approvals, dedup_key, created_at, expires_at)
    SELECT id, decision_id, reason, severity, message, requester_id, requester_role,
        principal_id, tenant_id, request_id, effect, violations, policy_revision,
        instance_id, constitutional_hash, required_approvals, dedup_key, created_at, expires_at
    FROM jsonb_populate_record(NULL::escalations, spec)
    ON CONFLICT DO NOTHING
    RETURNING id INTO opened;
    EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
        RAISE WARNING 'escalation % not opened: % (%)', spec ->> 'id', SQLERRM, SQLSTATE;
        RETURN;
    END;
    IF opened IS NOT NULL THEN
        PERFORM acgs_escalation_event(opened, 'opened', spec ->> 'requester_id');
    END IF;
END
$$;
