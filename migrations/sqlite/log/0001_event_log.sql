-- The FlowForge event log on SQLite (the embedded default).
-- One process writes, through one connection, so positions become visible in order
-- and the PostgreSQL visibility machinery is not needed here.

CREATE TABLE event_log (
    global_position INTEGER PRIMARY KEY,
    event_id        BLOB    NOT NULL UNIQUE,
    stream_id       TEXT    NOT NULL,
    stream_type     TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 1),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL CHECK (schema_version >= 1),
    tenant_id       TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    -- microseconds since the Unix epoch, UTC
    recorded_at     INTEGER NOT NULL,
    UNIQUE (stream_id, stream_version)
);

-- Append-only at the database level. SQLite has no TRUNCATE: a DELETE without WHERE
-- fires this trigger for its first row (the truncate optimisation is off when a
-- DELETE trigger exists).
CREATE TRIGGER event_log_no_update BEFORE UPDATE ON event_log
BEGIN
    SELECT RAISE(ABORT, 'event_log is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER event_log_no_delete BEFORE DELETE ON event_log
BEGIN
    SELECT RAISE(ABORT, 'event_log is append-only: DELETE is not allowed');
END;
