-- The FlowForge event log on PostgreSQL. See docs/architecture.md, "Reading the log
-- without skipping events", for why appends take a shared advisory lock.

CREATE SEQUENCE event_log_position_seq AS bigint MINVALUE 1 START 1 CACHE 1;

CREATE TABLE event_log (
    global_position bigint      PRIMARY KEY DEFAULT nextval('event_log_position_seq'),
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_type     text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version >= 1),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    tenant_id       text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT event_log_event_id_key UNIQUE (event_id),
    CONSTRAINT event_log_stream_version_key UNIQUE (stream_id, stream_version)
);

ALTER SEQUENCE event_log_position_seq OWNED BY event_log.global_position;

-- The log is append-only at the database level: no role, tool or bug can rewrite history.
CREATE FUNCTION event_log_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'FF002';
END
$$;

CREATE TRIGGER event_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION event_log_reject_change();

CREATE TRIGGER event_log_no_truncate
    BEFORE TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION event_log_reject_change();

-- Advisory-lock keys that announce an in-flight append: the top 16 bits are the tag
-- 0x4646 ("FF"), the low 48 bits the sequence's last value when the append began.
-- Every position that append allocates is greater than that value.
CREATE FUNCTION event_log_epoch_key(value bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (x'4646'::bigint << 48) | (value & x'0000FFFFFFFFFFFF'::bigint)
$$;

-- Appends a batch of events to one stream. Expected version codes: -1 any, -2 no
-- stream, -3 stream exists, n >= 0 exactly n. Raises FF001 (detail = current version)
-- on a version mismatch and FF003 on a stream type mismatch. If the first event id is
-- already stored, returns the stored positions of the batch with already_stored = true.
CREATE FUNCTION event_log_append(
    p_stream_id       text,
    p_stream_type     text,
    p_expected        bigint,
    p_tenant_id       text,
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_payloads        jsonb[],
    p_metadata        jsonb[]
) RETURNS TABLE (global_position bigint, stream_version bigint, already_stored boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_current bigint;
    v_type    text;
    v_last    bigint;
    v_called  boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM event_log e WHERE e.event_id = p_event_ids[1]) THEN
        RETURN QUERY
            SELECT e.global_position, e.stream_version, true
            FROM unnest(p_event_ids) WITH ORDINALITY AS i(id, n)
            JOIN event_log e ON e.event_id = i.id AND e.stream_id = p_stream_id
            ORDER BY i.n;
        RETURN;
    END IF;

    -- Announce this append before it allocates any position (see event_log_safe_position).
    SELECT s.last_value, s.is_called INTO v_last, v_called FROM event_log_position_seq s;
    PERFORM pg_advisory_xact_lock_shared(
        event_log_epoch_key(CASE WHEN v_called THEN v_last ELSE 0 END));

    SELECT e.stream_version, e.stream_type INTO v_current, v_type
    FROM event_log e
    WHERE e.stream_id = p_stream_id
    ORDER BY e.stream_version DESC
    LIMIT 1;
    v_current := coalesce(v_current, 0);

    IF v_type IS NOT NULL AND v_type <> p_stream_type THEN
        RAISE EXCEPTION 'stream % has type %', p_stream_id, v_type
            USING ERRCODE = 'FF003', DETAIL = v_type;
    END IF;
    IF (p_expected = -2 AND v_current <> 0)
       OR (p_expected = -3 AND v_current = 0)
       OR (p_expected >= 0 AND v_current <> p_expected) THEN
        RAISE EXCEPTION 'stream % is at version %', p_stream_id, v_current
            USING ERRCODE = 'FF001', DETAIL = v_current::text;
    END IF;

    RETURN QUERY
        INSERT INTO event_log AS e (event_id, stream_id, stream_type, stream_version, event_type,
                                    schema_version, tenant_id, payload, metadata)
        SELECT i.id, p_stream_id, p_stream_type, v_current + i.n, i.event_type,
               i.schema_version, p_tenant_id, i.payload, i.metadata
        FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_payloads, p_metadata)
             WITH ORDINALITY AS i(id, event_type, schema_version, payload, metadata, n)
        ORDER BY i.n
        RETURNING e.global_position, e.stream_version, false;
END
$$;

-- The highest position a reader may see: every event at or below it has committed (or
-- was rolled back and will never appear). Statement order matters and is why this is a
-- function: the sequence is read first, the in-flight appends second, and the caller's
-- next statement takes its snapshot after both.
--   * An append holding key k allocates only positions > k, so the minimum key of the
--     in-flight appends bounds every position that may still commit.
--   * With no append in flight, every position allocated before the sequence was read
--     has been decided.
CREATE FUNCTION event_log_safe_position() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_last   bigint;
    v_called boolean;
    v_oldest bigint;
BEGIN
    SELECT s.last_value, s.is_called INTO v_last, v_called FROM event_log_position_seq s;
    IF NOT v_called THEN
        v_last := 0;
    END IF;
    SELECT min(((l.classid::bigint << 32) | l.objid::bigint) & x'0000FFFFFFFFFFFF'::bigint)
    INTO v_oldest
    FROM pg_locks l
    WHERE l.locktype = 'advisory'
      AND l.objsubid = 1
      AND (l.classid::bigint >> 16) = x'4646'::bigint
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    RETURN least(v_last, v_oldest);
END
$$;
