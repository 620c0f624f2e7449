CREATE TABLE {comments} (
    comment_id       TEXT   PRIMARY KEY,
    tenant_id        TEXT   NOT NULL,
    -- `task` or `run`
    target_kind      TEXT   NOT NULL,
    target_id        TEXT   NOT NULL,
    -- `user` or `agent`
    author_kind      TEXT   NOT NULL,
    author_id        TEXT   NOT NULL,
    -- NULL once deleted
    body             TEXT,
    -- JSON: [{"name", "member": {"kind", "id"}}]
    mentions         TEXT   NOT NULL,
    -- JSON: {"<emoji>": [{"kind", "id"}]}
    reactions        TEXT   NOT NULL,
    -- milliseconds since the Unix epoch
    posted_at        BIGINT NOT NULL,
    edited_at        BIGINT,
    deleted_at       BIGINT,
    -- where comment.posted is in the log: the timeline's order
    posted_position  BIGINT NOT NULL,
    last_position    BIGINT NOT NULL
);
CREATE INDEX {comments}_by_target ON {comments} (tenant_id, target_kind, target_id, posted_position);
