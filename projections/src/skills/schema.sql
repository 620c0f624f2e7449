CREATE TABLE {skills} (
    skill_id         TEXT   PRIMARY KEY,
    tenant_id        TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    -- `template` or `knowledge`
    kind             TEXT   NOT NULL,
    description      TEXT   NOT NULL,
    -- knowledge skills: the newest version, its source and content hash
    latest_version   BIGINT,
    source_kind      TEXT,
    source_location  TEXT,
    sha256           TEXT,
    -- milliseconds since the Unix epoch
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    deleted_at       BIGINT,
    last_position    BIGINT NOT NULL
);
CREATE INDEX {skills}_by_name ON {skills} (tenant_id, name);
