CREATE TABLE {streams} (
    stream_id      TEXT   PRIMARY KEY,
    stream_type    TEXT   NOT NULL,
    tenant_id      TEXT   NOT NULL,
    version        BIGINT NOT NULL,
    first_position BIGINT NOT NULL,
    last_position  BIGINT NOT NULL,
    last_event     TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX {streams}_by_type ON {streams} (tenant_id, stream_type, stream_id);
