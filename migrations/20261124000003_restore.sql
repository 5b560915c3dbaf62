-- After a database restore (issue 8): a restored database forgets every intent and submit made
-- after its backup. While a mark is open, the engine records no intent and sends no submit;
-- `payoutd restore check` compares every open payout with the provider's registry since the
-- backup and clears the mark. See docs/restore.md.
CREATE TABLE restore_marks (
    id               uuid        PRIMARY KEY,
    backup_taken_at  timestamptz NOT NULL,
    marked_at        timestamptz NOT NULL DEFAULT now(),
    marked_by        text        NOT NULL,
    reason           text        NOT NULL,
    -- provider_reference_seq was moved to at least this value when the mark was set.
    reference_floor  bigint      NOT NULL,
    cleared_at       timestamptz,
    cleared_by       text,
    -- What the check found, per account.
    report           jsonb
);

-- At most one open mark.
CREATE UNIQUE INDEX restore_marks_one_open ON restore_marks ((true)) WHERE cleared_at IS NULL;
