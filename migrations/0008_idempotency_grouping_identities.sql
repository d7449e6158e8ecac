-- Issue 16: request_id as a real idempotency key across the fleet, escalations
-- grouped rather than flooded, and tokens bound to identities.
--
-- Everything here is maintained by the audit shipper's projection
-- (acgs_project_batch, run in each shipped batch's transaction, after the
-- insert into audit_decisions), so it holds whichever server journaled a
-- record and however late its journal reaches PostgreSQL (a server killed
-- after journaling is shipped by the next server on its host).

-- A token may name the person or service behind it; self-resolution of
-- escalations compares identities (see acgs.domain.escalation).
ALTER TABLE auth_tokens ADD COLUMN identity text CHECK (identity IS NULL OR identity <> '');

-- Grouping: one pending escalation per group_key within group_s of its opening;
-- later matching decisions attach to it (count, last_seen_at).
ALTER TABLE escalations
    ADD COLUMN group_key          text,
    ADD COLUMN count              bigint      NOT NULL DEFAULT 1,
    ADD COLUMN last_seen_at       timestamptz,
    ADD COLUMN requester_identity text        NOT NULL DEFAULT '';
CREATE INDEX escalations_group ON escalations (group_key, created_at)
    WHERE group_key IS NOT NULL AND state IN ('open', 'acknowledged');

-- An escalation id a server handed out that PostgreSQL merged into another
-- (same group, opened on another server; or the escalation of a retried
-- request). Always points at a row of escalations (kept flat: one hop).
CREATE TABLE escalation_aliases (
    alias         uuid        PRIMARY KEY,
    escalation_id uuid        NOT NULL,
    merged_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX escalation_aliases_target ON escalation_aliases (escalation_id);

-- The first decision PostgreSQL saw for each (caller, request_id), and the
-- digest of its request: a later decision of the same caller and request_id
-- with the same digest within the window is a retry of it.
CREATE TABLE idempotency_keys (
    caller_id     text        NOT NULL,
    request_id    text        NOT NULL,
    decision_id   uuid        NOT NULL,
    digest        bytea       NOT NULL,
    decided_at    timestamptz NOT NULL,
    escalation_id text        NOT NULL,
    PRIMARY KEY (caller_id, request_id)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (decided_at);

-- Decisions recorded as retries of an earlier decision (another server
-- answered the same request again). Both stay in audit_decisions.
CREATE TABLE decision_retries (
    decision_id uuid        PRIMARY KEY,
    retry_of    uuid        NOT NULL,
    linked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decision_retries_of ON decision_retries (retry_of);

-- The row an escalation id stands for now (itself, or what it was merged into).
CREATE FUNCTION acgs_escalation_target(esc uuid) RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT escalation_id FROM escalation_aliases WHERE alias = esc), esc)
$$;

-- Merge escalation id ``p_alias`` into ``p_target`` (kept flat); false, and nothing
-- changed, when ``p_target`` stands for no escalation row.
CREATE FUNCTION acgs_merge_escalation(p_alias uuid, p_target uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    p_target := acgs_escalation_target(p_target);
    IF p_alias = p_target OR NOT EXISTS (SELECT 1 FROM escalations WHERE id = p_target) THEN
        RETURN false;
    END IF;
    UPDATE escalation_aliases SET escalation_id = p_target WHERE escalation_id = p_alias;
    INSERT INTO escalation_aliases (alias, escalation_id) VALUES (p_alias, p_target)
        ON CONFLICT (alias) DO NOTHING;
    RETURN true;
END
$$;

-- Create the escalation ``spec`` describes, once (as in 0003), unless its id
-- was merged already, or a pending escalation of the same group_key was opened
-- within group_s before it: then the id becomes an alias of that one.
DROP FUNCTION acgs_open_escalation(jsonb);
CREATE FUNCTION acgs_open_escalation(spec jsonb, group_s double precision DEFAULT 0)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    opened uuid;
    head uuid;
BEGIN
    PERFORM pg_advisory_xact_lock(1254548929);
    BEGIN
    IF EXISTS (SELECT 1 FROM escalation_aliases WHERE alias = (spec ->> 'id')::uuid) THEN
        RETURN;
    END IF;
    IF group_s > 0 AND spec ->> 'group_key' IS NOT NULL THEN
        SELECT id INTO head FROM escalations
         WHERE group_key = spec ->> 'group_key' AND state IN ('open', 'acknowledged')
           AND expires_at > now()
           AND created_at >= (spec ->> 'created_at')::timestamptz - make_interval(secs => group_s)
           AND created_at <= (spec ->> 'created_at')::timestamptz + make_interval(secs => group_s)
           AND id <> (spec ->> 'id')::uuid
         ORDER BY created_at, id LIMIT 1;
        IF head IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM escalations WHERE id = (spec ->> 'id')::uuid) THEN
            PERFORM acgs_merge_escalation((spec ->> 'id')::uuid, head);
            RETURN;
        END IF;
    END IF;
    INSERT INTO escalations (
        id, decision_id, reason, severity, message, requester_id, requester_role,
        principal_id, tenant_id, request_id, effect, violations, policy_revision,
        instance_id, constitutional_hash, required_approvals, dedup_key, created_at, expires_at,
        group_key, requester_identity, last_seen_at)
    SELECT id, decision_id, reason, severity, message, requester_id, requester_role,
        principal_id, tenant_id, request_id, effect, violations, policy_revision,
        instance_id, constitutional_hash, required_approvals, dedup_key, created_at, expires_at,
        group_key, coalesce(requester_identity, ''), created_at
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

-- The projection of one shipped batch (the rows of acgs_audit_stage this
-- transaction inserted: a re-sent batch's rows were projected when first sent).
--  1. idempotency: a "decide" row whose (caller, request_id) PostgreSQL saw
--     with the same request digest within window_s is linked as a retry
--     (decision_retries); its escalation id becomes an alias of the first one's;
--  2. openings, in journal order, with grouping (acgs_open_escalation);
--  3. every other decision carrying an escalation id adds to its count.
-- Nothing here raises on a malformed record: the audit rows matter more.
CREATE FUNCTION acgs_project_batch(window_s double precision, group_s double precision)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    uuid_re constant text := '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
BEGIN
    PERFORM pg_advisory_xact_lock(1254548929);
    CREATE TEMP TABLE IF NOT EXISTS acgs_project_new
        (LIKE audit_decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    INSERT INTO acgs_project_new SELECT s.* FROM acgs_audit_stage s
        JOIN audit_decisions a ON a.instance_id = s.instance_id AND a.seq = s.seq
                              AND a.record_hash = s.record_hash
        WHERE a.shipped_at = now();

    -- Set-based, so that shipping pays two statements per batch, not two per record.
    -- The first decision of each (caller, request_id) in the batch takes the key unless
    -- PostgreSQL holds a live one with the same digest (a new key, a key past its
    -- window, or another body: only the server holding the first decision can refuse
    -- that one, so it is recorded as it is).
    INSERT INTO idempotency_keys (caller_id, request_id, decision_id, digest, decided_at,
                                  escalation_id)
    SELECT DISTINCT ON (caller_id, request_id) caller_id, request_id, decision_id,
           sha256(convert_to(request_json, 'UTF8')), decided_at, escalation_id
      FROM acgs_project_new WHERE kind = 'decide' AND request_id <> ''
     ORDER BY caller_id, request_id, seq
    ON CONFLICT (caller_id, request_id) DO UPDATE
       SET decision_id = excluded.decision_id, digest = excluded.digest,
           decided_at = excluded.decided_at, escalation_id = excluded.escalation_id
     WHERE idempotency_keys.decided_at < excluded.decided_at
       AND (idempotency_keys.digest <> excluded.digest
            OR idempotency_keys.decided_at
               < excluded.decided_at - make_interval(secs => window_s));
    -- Every other decision of a key with the same digest within the window is a retry.
    INSERT INTO decision_retries (decision_id, retry_of)
    SELECT n.decision_id, k.decision_id
      FROM acgs_project_new n
      JOIN idempotency_keys k ON k.caller_id = n.caller_id AND k.request_id = n.request_id
     WHERE n.kind = 'decide' AND n.request_id <> '' AND k.decision_id <> n.decision_id
       AND k.digest = sha256(convert_to(n.request_json, 'UTF8'))
       AND abs(extract(epoch FROM n.decided_at - k.decided_at)) <= window_s
    ON CONFLICT (decision_id) DO NOTHING;
    -- A retry's escalation id becomes an alias of the first decision's (rare: a loop).
    FOR r IN SELECT n.escalation_id AS retry_esc, k.escalation_id AS orig_esc,
                    k.caller_id, k.request_id
               FROM decision_retries d
               JOIN acgs_project_new n ON n.decision_id = d.decision_id AND n.kind = 'decide'
               JOIN idempotency_keys k ON k.caller_id = n.caller_id
                                      AND k.request_id = n.request_id
              WHERE d.linked_at = now() AND n.escalation_id ~ uuid_re ORDER BY n.seq LOOP
        IF r.orig_esc ~ uuid_re THEN
            -- Unless the retry's escalation already stands on its own.
            IF NOT EXISTS (SELECT 1 FROM escalations WHERE id = r.retry_esc::uuid) THEN
                PERFORM acgs_merge_escalation(r.retry_esc::uuid, r.orig_esc::uuid);
            END IF;
        ELSE
            UPDATE idempotency_keys SET escalation_id = r.retry_esc
             WHERE caller_id = r.caller_id AND request_id = r.request_id;
        END IF;
    END LOOP;

    PERFORM acgs_open_escalation(request_json::jsonb -> 'escalation', group_s)
       FROM acgs_project_new
      WHERE kind = 'escalation' AND request_json::jsonb #>> '{escalation,event}' = 'opened'
      ORDER BY seq;

    -- The opening decision is in the count from the start (1).
    UPDATE escalations e SET count = e.count + c.n,
                             last_seen_at = greatest(e.last_seen_at, c.last)
      FROM (SELECT t.id, count(*) AS n, max(t.decided_at) AS last
              FROM (SELECT acgs_escalation_target(n.escalation_id::uuid) AS id,
                           n.decision_id, n.decided_at
                      FROM acgs_project_new n
                     WHERE n.kind = 'decide' AND n.escalation_id ~ uuid_re
                       AND NOT EXISTS (SELECT 1 FROM decision_retries d
                                        WHERE d.decision_id = n.decision_id)) t
              JOIN escalations x ON x.id = t.id
             WHERE x.decision_id IS DISTINCT FROM t.decision_id
             GROUP BY t.id) c
     WHERE e.id = c.id;

    -- Keys far past every window a late journal could still need.
    DELETE FROM idempotency_keys
     WHERE decided_at < now() - make_interval(secs => window_s + 86400);
END
$$;
