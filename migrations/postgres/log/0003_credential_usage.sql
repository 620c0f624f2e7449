-- When each API key was last used: bookkeeping, not history. A use is not a change of
-- identity, and recording every request in the log would drown the audit trail; the
-- log keeps what a key may do and when that changed, this table when it was last used
-- (updated at most once a minute per key and process).
CREATE TABLE credential_usage (
    tenant_id    TEXT   NOT NULL,
    credential   TEXT   NOT NULL,
    -- milliseconds since the Unix epoch
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, credential)
);
