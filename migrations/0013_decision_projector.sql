-- Issue 15: no SQL parses journal data. The projection of shipped batches is
-- done by the shipper's Python projectors (acgs.adapters.projectors): the
-- decision projector keeps idempotency_keys and decision_retries (with the
-- digest computed in Python from the record's bytes, as sha256 of request_json
-- in UTF-8 like this function did, so the keys it left stay valid), the
-- escalation projector the escalations. The function that did it here, reading
-- escalations out of request_json, goes (IF EXISTS: the escalation projector's
-- migration may have dropped it already).
DROP FUNCTION IF EXISTS acgs_project_batch(double precision, double precision);
