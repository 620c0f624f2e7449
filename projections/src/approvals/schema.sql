CREATE TABLE {approvals} (
    approval_id   TEXT   PRIMARY KEY,
    tenant_id     TEXT   NOT NULL,
    run_id        TEXT   NOT NULL,
    function_id   TEXT   NOT NULL,
    step_id       TEXT   NOT NULL,
    title         TEXT   NOT NULL,
    description   TEXT,
    -- JSON array of user ids or e-mails; empty: any member may decide
    assignees     TEXT   NOT NULL,
    -- `pending`, `approved`, `rejected` or `timed_out`
    status        TEXT   NOT NULL,
    decided_by    TEXT,
    comment       TEXT,
    -- milliseconds since the Unix epoch
    requested_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    decided_at    BIGINT,
    last_position BIGINT NOT NULL
);
CREATE INDEX {approvals}_by_status ON {approvals} (tenant_id, status, requested_at);
