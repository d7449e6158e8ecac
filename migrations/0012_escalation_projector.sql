-- Issue 15: escalations, their events and their aliases have one writer, the
-- escalation projector (acgs.adapters.projectors.escalations), which applies
-- the typed events escalation.opened, incident.opened and escalation.changed
-- and counts the decisions that joined an escalation. It runs in the audit
-- shipper's transaction and, for a change a server must answer with, in that
-- server's own transaction right after the event was journaled. Nothing in
-- SQL reads an event's JSON any more: the functions that did are dropped.

-- An applied event is recorded once: the shipper re-applying an event a server
-- applied already (same event id, the journal record's decision_id) is a no-op.
-- NULL for events recorded before typed events.
ALTER TABLE escalation_events ADD COLUMN event_id uuid UNIQUE;

-- Record a change of escalation ``esc`` made by event ``event_id`` and wake the
-- watchers (as in 0003: every writer of events holds advisory lock 0x4AC6E5C1
-- until it commits, so seqs become visible in seq order). It reads the row, not
-- any JSON of the journal.
DROP FUNCTION acgs_escalation_event(uuid, text, text);
CREATE FUNCTION acgs_escalation_event(esc uuid, event text, actor text, event_id uuid)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1254548929);  -- 0x4AC6E5C1
    INSERT INTO escalation_events (escalation_id, kind, actor_id, snapshot, event_id)
        SELECT e.id, event, actor, to_jsonb(e), acgs_escalation_event.event_id
          FROM escalations e WHERE e.id = esc
        RETURNING seq INTO s;
    IF s IS NULL THEN
        RAISE EXCEPTION 'no escalation %', esc;
    END IF;
    UPDATE escalations SET last_event_seq = s WHERE id = esc;
    PERFORM pg_notify('acgs_escalation_events', s::text);
    RETURN s;
END
$$;

DROP FUNCTION IF EXISTS acgs_open_escalation(jsonb);
DROP FUNCTION IF EXISTS acgs_open_escalation(jsonb, double precision);

-- acgs_project_batch (0008) keeps only what is not the escalation projector's:
-- idempotency keys and decision retries (decisions of both the legacy kind
-- "decide" and the typed kind "decision", approvals excluded). The decision
-- projector replaces it (migration 0013); the escalation projector reads the
-- retries it records to alias a retry's escalation and leave it uncounted.
CREATE OR REPLACE FUNCTION acgs_project_batch(window_s double precision,
                                              group_s double precision)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    uuid_re constant text := '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
BEGIN
    PERFORM pg_advisory_xact_lock(1254548929);
    CREATE TEMP TABLE IF NOT EXISTS acgs_project_new
        (LIKE audit_decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    DELETE FROM acgs_project_new;
    INSERT INTO acgs_project_new SELECT s.* FROM acgs_audit_stage s
        JOIN audit_decisions a ON a.instance_id = s.instance_id AND a.seq = s.seq
                              AND a.record_hash = s.record_hash
        WHERE a.shipped_at = now() AND s.kind IN ('decide', 'decision') AND s.data = '';

    INSERT INTO idempotency_keys (caller_id, request_id, decision_id, digest, decided_at,
                                  escalation_id)
    SELECT DISTINCT ON (caller_id, request_id) caller_id, request_id, decision_id,
           sha256(convert_to(request_json, 'UTF8')), decided_at, escalation_id
      FROM acgs_project_new WHERE request_id <> ''
     ORDER BY caller_id, request_id, seq
    ON CONFLICT (caller_id, request_id) DO UPDATE
       SET decision_id = excluded.decision_id, digest = excluded.digest,
           decided_at = excluded.decided_at, escalation_id = excluded.escalation_id
     WHERE idempotency_keys.decided_at < excluded.decided_at
       AND (idempotency_keys.digest <> excluded.digest
            OR idempotency_keys.decided_at
               < excluded.decided_at - make_interval(secs => window_s));
    INSERT INTO decision_retries (decision_id, retry_of)
    SELECT n.decision_id, k.decision_id
      FROM acgs_project_new n
      JOIN idempotency_keys k ON k.caller_id = n.caller_id AND k.request_id = n.request_id
     WHERE n.request_id <> '' AND k.decision_id <> n.decision_id
       AND k.digest = sha256(convert_to(n.request_json, 'UTF8'))
       AND abs(extract(epoch FROM n.decided_at - k.decided_at)) <= window_s
    ON CONFLICT (decision_id) DO NOTHING;
    -- A key whose first decision had no escalation takes its retry's (the escalation
    -- projector aliases a retry's escalation to the key's when the key has one).
    FOR r IN SELECT n.escalation_id AS retry_esc, k.caller_id, k.request_id
               FROM decision_retries d
               JOIN acgs_project_new n ON n.decision_id = d.decision_id
               JOIN idempotency_keys k ON k.caller_id = n.caller_id
                                      AND k.request_id = n.request_id
              WHERE d.linked_at = now() AND n.escalation_id ~ uuid_re
                AND k.escalation_id !~ uuid_re ORDER BY n.seq LOOP
        UPDATE idempotency_keys SET escalation_id = r.retry_esc
         WHERE caller_id = r.caller_id AND request_id = r.request_id;
    END LOOP;

    DELETE FROM idempotency_keys
     WHERE decided_at < now() - make_interval(secs => window_s + 86400);
END
$$;

-- Aliases are written by the escalation projector (Python, typed parameters).
DROP FUNCTION acgs_merge_escalation(uuid, uuid);
