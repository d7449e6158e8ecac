-- Issue 15: every change of the system is a typed event (acgs.domain.events).
--
-- audit_decisions keeps every record of every chain, decisions and all other
-- events alike (its name is historical). ``schema`` is the version of the
-- event's typed payload (0: a record written before typed events, hashed
-- without these two columns) and ``data`` the payload's canonical JSON, kept
-- byte for byte so that the record's hash can be checked. Nothing in SQL reads
-- ``data``: the shipper's Python projectors (acgs.adapters.projectors) decode it.
ALTER TABLE audit_decisions
    ADD COLUMN schema smallint NOT NULL DEFAULT 0 CHECK (schema >= 0),
    ADD COLUMN data   text     NOT NULL DEFAULT '';
ALTER TABLE audit_checkpoints
    ADD COLUMN schema smallint NOT NULL DEFAULT 0 CHECK (schema >= 0),
    ADD COLUMN data   text     NOT NULL DEFAULT '';

-- Acgs.v1.Audit/ListEvents pages in (decided_at, instance_id, seq) order, by kind or actor.
CREATE INDEX audit_decisions_kind ON audit_decisions (kind, decided_at, instance_id, seq);
CREATE INDEX audit_decisions_caller ON audit_decisions (caller_id, decided_at, instance_id, seq);
