-- One round trip for a gap-safe read of the log, instead of two (the safe position,
-- then the read). Every reader that follows another process's commits pays for each
-- read twice otherwise: in round trips and in statements.
--
-- Still two statements, in the order event_log_safe_position() requires: a VOLATILE
-- plpgsql function takes a fresh snapshot for each query it runs (under READ
-- COMMITTED, which is how FlowForge's pools run), so the read's snapshot is taken after
-- the safe position was computed, exactly as with two calls from the client. Inside a
-- REPEATABLE READ or SERIALIZABLE transaction the snapshot would be the transaction's,
-- and the read could miss events below the safe position: never call it in one.
--
-- The first row is a header: `upper_bound` is the highest position the read looked
-- through (a reader may move its position there even when no event matched), and its
-- other columns are NULL. Event rows follow in position order, `upper_bound` NULL.
CREATE FUNCTION event_log_read(
    p_after  bigint,
    p_window bigint,
    p_limit  bigint,
    p_tenant text,
    p_types  text[]
) RETURNS TABLE (upper_bound bigint, global_position bigint, event_id uuid,
                 stream_id text, stream_type text, stream_version bigint,
                 event_type text, schema_version integer, payload json,
                 metadata json, recorded_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_safe  bigint := event_log_safe_position();
    v_upper bigint;
BEGIN
    IF v_safe <= p_after THEN
        RETURN QUERY SELECT p_after, NULL::bigint, NULL::uuid, NULL::text, NULL::text,
            NULL::bigint, NULL::text, NULL::integer, NULL::json, NULL::json,
            NULL::timestamptz;
        RETURN;
    END IF;
    v_upper := least(v_safe, p_after + p_window);
    RETURN QUERY SELECT v_upper, NULL::bigint, NULL::uuid, NULL::text, NULL::text,
        NULL::bigint, NULL::text, NULL::integer, NULL::json, NULL::json,
        NULL::timestamptz;
    RETURN QUERY
        SELECT NULL::bigint, e.global_position, e.event_id, e.stream_id, e.stream_type,
               e.stream_version, e.event_type, e.schema_version, e.payload, e.metadata,
               e.recorded_at
        FROM event_log e
        WHERE e.global_position > p_after AND e.global_position <= v_upper
          AND (p_tenant IS NULL OR e.tenant_id = p_tenant)
          AND (p_types IS NULL OR e.event_type = ANY(p_types))
        ORDER BY e.global_position
        LIMIT p_limit;
END
$$;
