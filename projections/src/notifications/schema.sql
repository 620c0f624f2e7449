CREATE TABLE {notifications} (
    -- `<causing event id>:<recipient>`: one notification per causing event and person
    notification_id  TEXT   PRIMARY KEY,
    tenant_id        TEXT   NOT NULL,
    -- a user id
    recipient        TEXT   NOT NULL,
    -- `task_assigned`, `mentioned` or `approval_requested`
    kind             TEXT   NOT NULL,
    -- who caused it: JSON {"kind", "id"}
    actor            TEXT   NOT NULL,
    task_id          TEXT,
    comment_id       TEXT,
    run_id           TEXT,
    approval_id      TEXT,
    -- a short text for the inbox
    summary          TEXT   NOT NULL,
    source_position  BIGINT NOT NULL,
    -- milliseconds since the Unix epoch
    created_at       BIGINT NOT NULL,
    read_at          BIGINT,
    archived_at      BIGINT
);
CREATE INDEX {notifications}_inbox ON {notifications} (tenant_id, recipient, archived_at, read_at, source_position);
