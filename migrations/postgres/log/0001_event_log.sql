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
    -- json, not jsonb: the log keeps the exact text it was given, and neither writing
    -- nor reading pays for converting to and from the binary form.
    payload         json        NOT NULL,
    metadata        json        NOT NULL,
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

-- Appends a group of appends, each to one stream, in one transaction (one round trip,
-- one commit). Append i has p_counts[i] events, laid out consecutively in the event
-- arrays. Expected version codes: -1 any, -2 no stream, -3 stream exists, n >= 0
-- exactly n. Each append is checked on its own and reported with a status:
--   'ok'          inserted;
--   'stored'      its first event id was already stored: the stored positions of its
--                 event ids (an idempotent retry; the caller checks they are all there);
--   'conflict'    the stream was not at the expected version (detail: current version);
--   'stream_type' the stream has another type (detail: that type).
-- A refused append writes nothing and does not affect the others. A concurrent
-- transaction inserting the same stream version makes the whole call fail with a
-- unique violation; the caller then retries the appends one by one.
CREATE FUNCTION event_log_append(
    p_stream_ids      text[],
    p_stream_types    text[],
    p_expected        bigint[],
    p_tenant_ids      text[],
    p_counts          integer[],
    p_event_ids       uuid[],
    p_event_types     text[],
    p_schema_versions integer[],
    p_payloads        text[],
    p_metadata        text[]
) RETURNS TABLE (append_index integer, status text, global_position bigint,
                 stream_version bigint, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_last    bigint;
    v_called  boolean;
    v_offset  integer := 0;
    v_first   integer;
    v_final   integer;
    v_current bigint;
    v_type    text;
BEGIN
    -- Announce this transaction before it allocates any position (see event_log_safe_position).
    SELECT s.last_value, s.is_called INTO v_last, v_called FROM event_log_position_seq s;
    PERFORM pg_advisory_xact_lock_shared(
        event_log_epoch_key(CASE WHEN v_called THEN v_last ELSE 0 END));

    FOR i IN 1 .. coalesce(array_length(p_stream_ids, 1), 0) LOOP
        v_first := v_offset + 1;
        v_final := v_offset + p_counts[i];
        v_offset := v_final;

        IF EXISTS (SELECT 1 FROM event_log e WHERE e.event_id = p_event_ids[v_first]) THEN
            RETURN QUERY
                SELECT i, 'stored'::text, e.global_position, e.stream_version, NULL::text
                FROM unnest(p_event_ids[v_first:v_final]) WITH ORDINALITY AS ids(id, n)
                JOIN event_log e ON e.event_id = ids.id AND e.stream_id = p_stream_ids[i]
                ORDER BY ids.n;
            CONTINUE;
        END IF;

        v_current := NULL;
        v_type := NULL;
        SELECT e.stream_version, e.stream_type INTO v_current, v_type
        FROM event_log e
        WHERE e.stream_id = p_stream_ids[i]
        ORDER BY e.stream_version DESC
        LIMIT 1;
        v_current := coalesce(v_current, 0);

        IF v_type IS NOT NULL AND v_type <> p_stream_types[i] THEN
            RETURN QUERY SELECT i, 'stream_type'::text, NULL::bigint, NULL::bigint, v_type;
            CONTINUE;
        END IF;
        IF (p_expected[i] = -2 AND v_current <> 0)
           OR (p_expected[i] = -3 AND v_current = 0)
           OR (p_expected[i] >= 0 AND v_current <> p_expected[i]) THEN
            RETURN QUERY SELECT i, 'conflict'::text, NULL::bigint, NULL::bigint, v_current::text;
            CONTINUE;
        END IF;

        RETURN QUERY
            INSERT INTO event_log AS e (event_id, stream_id, stream_type, stream_version,
                                        event_type, schema_version, tenant_id, payload, metadata)
            SELECT ev.id, p_stream_ids[i], p_stream_types[i], v_current + ev.n, ev.event_type,
                   ev.schema_version, p_tenant_ids[i], ev.payload::json, ev.metadata::json
            FROM unnest(p_event_ids[v_first:v_final], p_event_types[v_first:v_final],
                        p_schema_versions[v_first:v_final], p_payloads[v_first:v_final],
                        p_metadata[v_first:v_final])
                 WITH ORDINALITY AS ev(id, event_type, schema_version, payload, metadata, n)
            ORDER BY ev.n
            RETURNING i, 'ok'::text, e.global_position, e.stream_version, NULL::text;
    END LOOP;
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
