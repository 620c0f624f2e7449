CREATE TABLE {runs} (
    run_id           TEXT   PRIMARY KEY,
    tenant_id        TEXT   NOT NULL,
    environment      TEXT   NOT NULL,
    app_id           TEXT   NOT NULL,
    function_id      TEXT   NOT NULL,
    function_version BIGINT NOT NULL,
    status           TEXT   NOT NULL,
    event_id         TEXT,
    event_name       TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    steps_completed  BIGINT NOT NULL,
    failed_attempts  BIGINT NOT NULL,
    output           TEXT,
    error            TEXT,
    replay_of        TEXT,
    parent_run_id    TEXT,
    skip_reason      TEXT,
    skip_detail      TEXT,
    -- The flow-control hold on the run's latest held call, while it lasts.
    hold_reason      TEXT,
    hold_key         TEXT,
    hold_detail      TEXT,
    hold_since       BIGINT,
    hold_until       BIGINT,
    hold_token       BIGINT,
    stream_version   BIGINT NOT NULL,
    last_position    BIGINT NOT NULL
);
CREATE INDEX {runs}_by_created ON {runs} (tenant_id, environment, created_at, run_id);
CREATE INDEX {runs}_by_status ON {runs} (tenant_id, environment, status, created_at);
CREATE INDEX {runs}_by_function ON {runs} (tenant_id, environment, function_id, created_at);
CREATE INDEX {runs}_by_event ON {runs} (tenant_id, environment, event_id);
CREATE INDEX {runs}_by_hold ON {runs} (tenant_id, environment, function_id, hold_reason, hold_key, hold_since);
