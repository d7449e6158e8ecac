-- Signed checkpoints of the audit chains (see acgs.domain.checkpoint), kept apart
-- from audit_decisions: a checkpoint record is also a row of its chain there, and
-- the shipper copies it here in the same transaction (acgs.adapters.pg_checkpoints).
-- This copy is what lets VerifyChain name a chain whose tail, or whole self, was
-- deleted from audit_decisions. Rows are the checkpoint records verbatim (the
-- same columns as audit_decisions): nothing is parsed on the way in, so no
-- content can make the copy fail. PostgreSQL never holds a signing key: a
-- writer here can delete checkpoints, but cannot make new ones a trusted key
-- signed.
CREATE TABLE audit_checkpoints (LIKE audit_decisions INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE audit_checkpoints ADD PRIMARY KEY (instance_id, seq);
