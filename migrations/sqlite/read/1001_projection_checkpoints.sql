-- One row per projection generation. The 'active' generation is what the API reads
-- (through a view named after the projection's table); a 'building' generation is a
-- rebuild in progress. A checkpoint is only ever written in the same transaction as
-- the read-model rows it covers.
CREATE TABLE projection_checkpoints (
    name           TEXT   NOT NULL,
    generation     BIGINT NOT NULL,
    state          TEXT   NOT NULL CHECK (state IN ('active', 'building')),
    position       BIGINT NOT NULL,
    schema_version BIGINT NOT NULL,
    events_applied BIGINT NOT NULL DEFAULT 0,
    -- milliseconds since the Unix epoch
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (name, generation)
);
