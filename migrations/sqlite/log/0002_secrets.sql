-- Secrets (webhook signing secrets) live beside the log, never in it: the log is read by
-- auditors and exported, and nothing written to it can be removed again. The log keeps
-- a fingerprint of each secret. Values are stored as given; encrypting them at rest with
-- a server key is future work (see README).
CREATE TABLE secrets (
    tenant_id  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    value      TEXT   NOT NULL,
    -- milliseconds since the Unix epoch
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
