-- Issue 15: policy history, not a mutable row. See acgs.domain.policy_history and
-- acgs.adapters.pg_policies.
--
-- policy_history is the ordered, append-only history of the fleet's desired
-- revision. It is a stack: an activation pushes (``activated``); a rollback pops
-- the activation in force and makes the one beneath it desired again
-- (``rolled_back``), so two rollbacks in a row step back twice and a rollback
-- never returns to what was rolled back. Each entry names the activation in
-- force after it (``in_force``: its own seq for an activation), an activation
-- the one it was pushed on (``beneath``: what a rollback restores; NULL when
-- nothing is beneath) and a rollback the activation it undid (``undoes``).
-- Every entry is written by PgPolicyStore alone, with its audit event
-- (policy.activated / policy.rolled_back, ``event_id``) appended to the
-- PostgreSQL-side "admin" chain in the same transaction. Rows are never updated
-- or deleted.
--
-- policy_state becomes a view of the last entry (derived: it cannot disagree
-- with the history, and nothing can write it). Its columns are the old table's:
-- ``generation`` is the last entry's seq, so it still grows on every
-- activation and rollback; the history continues the old generation counter.
CREATE TABLE policy_history (
    seq                bigint      PRIMARY KEY CHECK (seq >= 1),
    action             text        NOT NULL CHECK (action IN ('activated', 'rolled_back')),
    revision           text        NOT NULL REFERENCES policy_versions (revision),
    replaced_revision  text        REFERENCES policy_versions (revision),
    in_force           bigint      NOT NULL REFERENCES policy_history (seq),
    beneath            bigint      REFERENCES policy_history (seq),
    undoes             bigint      REFERENCES policy_history (seq),
    actor_id           text        NOT NULL,
    actor_role         text        NOT NULL,
    actor_identity     text        NOT NULL DEFAULT '',
    message            text        NOT NULL DEFAULT '',  -- why (a rollback's reason)
    at                 timestamptz NOT NULL,
    event_id           text        UNIQUE,  -- NULL only for the entries carried over below
    CHECK (CASE action
           WHEN 'activated' THEN in_force = seq AND undoes IS NULL
           ELSE in_force < seq AND beneath IS NULL AND undoes IS NOT NULL END)
);

-- Why a version was uploaded (``acgs policy push -m``); '' when not said.
ALTER TABLE policy_versions ADD COLUMN message text NOT NULL DEFAULT '';

-- The old row becomes the history it implies: the previous revision activated,
-- then the desired one on top of it (one rollback possible, as before). These
-- entries have no audit event: nothing was recorded when they happened.
INSERT INTO policy_history (seq, action, revision, replaced_revision, in_force, beneath,
                            actor_id, actor_role, message, at)
SELECT generation - 1, 'activated', previous_revision, NULL, generation - 1, NULL,
       'unknown', 'unknown', 'carried over from policy_state (migration 0014)', activated_at
FROM policy_state WHERE previous_revision IS NOT NULL AND generation > 1;

INSERT INTO policy_history (seq, action, revision, replaced_revision, in_force, beneath,
                            actor_id, actor_role, message, at)
SELECT s.generation, 'activated', s.desired_revision, h.revision, s.generation, h.seq,
       s.activated_by, 'unknown', 'carried over from policy_state (migration 0014)',
       s.activated_at
FROM policy_state s LEFT JOIN policy_history h ON h.seq = s.generation - 1;

DROP TABLE policy_state;

CREATE VIEW policy_state AS
SELECT revision AS desired_revision, replaced_revision AS previous_revision,
       seq AS generation, actor_id AS activated_by, at AS activated_at
FROM policy_history ORDER BY seq DESC LIMIT 1;

-- Automatic rollbacks are policy_history entries (action rolled_back, the server as
-- actor, the reason as message) with their policy.rolled_back event: nothing writes
-- policy_rollbacks any more; it keeps the rows written before this migration.
COMMENT ON TABLE policy_rollbacks IS
    'automatic rollbacks before migration 0014; since then: policy_history';
