-- Records the audit shipper could not store as rows of audit_decisions: a journal
-- line that failed its check (damaged on disk), or a record PostgreSQL refused
-- for its content. Each keeps its place in its chain (instance_id, seq), the
-- journal line verbatim (bytea: a damaged line may be anything, NUL included),
-- where it was read (segment file @ byte offset) and why it is here (for a
-- refused record, the database's own error text). Written in the same
-- transaction that ships the records around it, exactly once.
CREATE TABLE audit_quarantine (
    instance_id    text        NOT NULL,
    seq            bigint      NOT NULL CHECK (seq > 0),
    source         text        NOT NULL,
    line           bytea       NOT NULL,
    reason         text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, seq)
);
