-- Reactors (the scheduler) keep here the log position up to which every effect they
-- started has been committed. Unlike projection checkpoints, these are not written in
-- the same transaction as the effects (the effects are appends to the log, which are
-- idempotent); after a restart a reactor re-reads the log from here.
CREATE TABLE reactor_checkpoints (
    name       TEXT   PRIMARY KEY,
    position   BIGINT NOT NULL,
    -- milliseconds since the Unix epoch
    updated_at BIGINT NOT NULL
);
