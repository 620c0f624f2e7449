-- event_log_append now also says when each inserted event was recorded: its 'ok' rows
-- carry `recorded_at` in microseconds since the Unix epoch as their detail (it was NULL).
-- The writer then knows each committed event exactly as a reader of the log will see
-- it, and hands it to the process's log tail without reading it back. The signature
-- and the other statuses are unchanged; only the function's body is replaced.
CREATE OR REPLACE FUNCTION event_log_append(
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
            RETURNING i, 'ok'::text, e.global_position, e.stream_version,
                      (extract(epoch FROM e.recorded_at) * 1000000)::bigint::text;
    END LOOP;
END
$$;
