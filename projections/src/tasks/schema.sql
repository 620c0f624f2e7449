CREATE TABLE {tasks} (
    task_id        TEXT   PRIMARY KEY,
    tenant_id      TEXT   NOT NULL,
    number         BIGINT NOT NULL,
    title          TEXT   NOT NULL,
    description    TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    priority       TEXT   NOT NULL,
    -- 0 (none) to 4 (urgent), to order by
    priority_rank  BIGINT NOT NULL,
    -- JSON array of strings
    labels         TEXT   NOT NULL,
    parent_id      TEXT,
    assignee_kind  TEXT,
    assignee_id    TEXT,
    -- milliseconds since the Unix epoch
    due_at         BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    -- JSON array of run ids
    runs           TEXT   NOT NULL,
    last_position  BIGINT NOT NULL
);
CREATE UNIQUE INDEX {tasks}_by_number ON {tasks} (tenant_id, number);
CREATE INDEX {tasks}_by_status ON {tasks} (tenant_id, status, priority_rank, number);
CREATE INDEX {tasks}_by_assignee ON {tasks} (tenant_id, assignee_id, status);
CREATE INDEX {tasks}_by_parent ON {tasks} (tenant_id, parent_id, status);
