CREATE TABLE {notifications} (
    -- `<causing event id>:<recipient>`: one notification per causing event and person
    notification_id  TEXT   PRIMARY KEY,
    tenant_id        TEXT   NOT NULL,
    -- a user id
    recipient        TEXT   NOT NULL,
    -- `task_assigned`, `mentioned`, `approval_requested`, `agent_blocked` or `run_failed`
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
-- Who owns what, as the log says, for the notifications that go to an owner:
-- `agent:<agent id>` (its creator) and `app:<app id>` (`app.owner_set`).
CREATE TABLE {notification_owners} (
    tenant_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    owner      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, subject)
);
-- The agent each task is assigned to (none: no row), for "an agent I own is blocked".
CREATE TABLE {notification_task_agents} (
    tenant_id  TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, task_id)
);
