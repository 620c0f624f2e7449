CREATE TABLE {events} (
    stream_id   TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL,
    environment TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    ts          BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    source      TEXT   NOT NULL,
    position    BIGINT NOT NULL
);
CREATE INDEX {events}_by_received ON {events} (tenant_id, environment, received_at, stream_id);
CREATE INDEX {events}_by_id ON {events} (tenant_id, environment, id);
CREATE INDEX {events}_by_name ON {events} (tenant_id, environment, name, received_at);
