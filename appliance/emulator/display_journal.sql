-- qsys2.display_journal: the IBM i table function, over qsys2.emu_entry.
--
-- Callable positionally or with IBM's parameter names in named notation
-- (journal_library => ?, starting_sequence => CAST(? AS DECIMAL(21,0))).
-- PostgreSQL has no TABLE(...) wrapper: FROM qsys2.display_journal(...) AS j.
--
-- Semantics (domain brief §1, §3):
-- * the receiver range runs in chain order from the starting receiver
--   (a name, *CURRENT = attached only, *CURCHAIN / *CURAVLCHN = back from the
--   attached receiver to a chain break or a deleted receiver, *CURSEQCHN =
--   also stopping at a sequence reset) to the ending receiver (default
--   *CURRENT); a starting receiver after the ending one is CPF7074;
-- * starting_sequence / ending_sequence use the FIRST occurrence of the number
--   in that range (chain order), as QjoRetrieveJournalEntries does; an end
--   before the start is CPF7054; a start beyond every entry returns no rows;
-- * a missing or deleted receiver is CPF9801 (SQLSTATE 42704);
-- * filters: journal_codes, journal_entry_types ('*ALL', '*RCD' = record
--   level types), object library/name(list)/type/member, user, job ('name'
--   or 'number/user/name'), program, commit_cycle, ending_timestamp.
--
-- eof_delay (parameter 21, integer seconds) is a bounded wait here. When it
-- is given (> 0) and the call finds no qualifying entry (after every filter
-- and the ending bound), the function re-reads every 10 ms (pg_sleep; each
-- new statement of this VOLATILE function sees rows committed meanwhile, in
-- READ COMMITTED, i.e. autocommit) until an entry qualifies or eof_delay
-- seconds have passed, then returns what exists then: possibly nothing. The
-- latency injection (latency_ms) is paid once per call, before any wait.
-- This is NOT what IBM i does: there, with EOF_DELAY the cursor does not
-- end at end-of-journal but keeps waiting and returning new entries (a
-- RCVJRNE-like stream, brief section 1.1, parameter 21), so a reader fetching
-- until end-of-data would never finish on an idle journal. The emulator
-- models only what the miner relies on: a call that comes back as soon as
-- something is there, and in bounded time. On a real system the miner bounds
-- the cursor itself: no ORDER BY, at most one window of rows fetched one by
-- one, the cursor always closed, and the statement cancelled (SQLCancel)
-- ibmi.wait_s + 5 s after the call started or 0.1 s after its latest row,
-- keeping the rows already fetched (docs/fidelity-journal.md, "Waiting
-- reads"). Untested against a real IBM i.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                    WHERE n.nspname = 'qsys2' AND t.typname = 'display_journal_row') THEN
        CREATE TYPE qsys2.display_journal_row AS (
            entry_timestamp timestamp(6),
            sequence_number numeric(21, 0),
            journal_code char(1),
            journal_entry_type char(2),
            count_or_rrn numeric(21, 0),
            commit_cycle numeric(21, 0),
            object char(30),
            object_type varchar(10),
            indicator_flag char(1),
            job_name varchar(10),
            job_user varchar(10),
            job_number varchar(6),
            "current_user" varchar(10),
            user_name varchar(10),
            program_name varchar(10),
            program_library varchar(10),
            receiver_library varchar(10),
            receiver_name varchar(10),
            null_value_indicators varchar(8000),
            entry_data bytea);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION qsys2.emu_list(p_value text) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_value IS NULL OR upper(trim(p_value)) IN ('', '*ALL') THEN NULL
                ELSE regexp_split_to_array(upper(trim(p_value)), '[ ,]+') END
$$;

-- The receiver named lib/name of a journal, or CPF9801.
CREATE OR REPLACE FUNCTION qsys2.emu_receiver_named(
    p_journal qsys2.emu_journal, p_library text, p_name text)
RETURNS qsys2.emu_receiver
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lib text := upper(trim(coalesce(p_library, '*LIBL')));
    r qsys2.emu_receiver;
BEGIN
    SELECT * INTO r FROM qsys2.emu_receiver
     WHERE journal_id = p_journal.journal_id AND status <> 'DELETED'
       AND receiver_name = upper(trim(p_name))
       AND (lib IN ('*LIBL', '*CURLIB') OR receiver_library = lib);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'CPF9801 Object % in library % not found.',
            upper(trim(p_name)), lib USING ERRCODE = '42704';
    END IF;
    RETURN r;
END $$;

-- Receiver ids of the requested range, in chain order.
CREATE OR REPLACE FUNCTION qsys2.emu_receiver_range(
    p_journal qsys2.emu_journal, p_start_library text, p_start_name text,
    p_end_library text, p_end_name text)
RETURNS int[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    start_name text := upper(trim(coalesce(p_start_name, '*CURRENT')));
    end_name text := upper(trim(coalesce(p_end_name, '*CURRENT')));
    attached qsys2.emu_receiver;
    first_r qsys2.emu_receiver;
    last_r qsys2.emu_receiver;
    r qsys2.emu_receiver;
    ids int[] := '{}';
BEGIN
    SELECT * INTO attached FROM qsys2.emu_receiver
     WHERE receiver_id = p_journal.attached_receiver_id;
    IF end_name = '*CURRENT' THEN
        last_r := attached;
    ELSE
        last_r := qsys2.emu_receiver_named(p_journal, p_end_library, end_name);
    END IF;
    IF start_name = '*CURRENT' THEN
        first_r := attached;
    ELSIF start_name IN ('*CURCHAIN', '*CURAVLCHN', '*CURSEQCHN') THEN
        first_r := attached;
        FOR r IN SELECT * FROM qsys2.emu_receiver
                  WHERE journal_id = p_journal.journal_id
                    AND chain_position <= attached.chain_position
                  ORDER BY chain_position DESC LOOP
            EXIT WHEN r.status = 'DELETED' OR r.chain_number <> attached.chain_number
                OR r.chain_position <> first_r.chain_position - 1
                   AND r.receiver_id <> attached.receiver_id;
            first_r := r;
            EXIT WHEN start_name = '*CURSEQCHN' AND r.sequence_reset;
        END LOOP;
    ELSE
        first_r := qsys2.emu_receiver_named(p_journal, p_start_library, start_name);
    END IF;
    IF first_r.chain_position > last_r.chain_position THEN
        RAISE EXCEPTION 'CPF7074 Receiver range not valid: % is after % in the chain.',
            first_r.receiver_name, last_r.receiver_name USING ERRCODE = '22023';
    END IF;
    FOR r IN SELECT * FROM qsys2.emu_receiver
              WHERE journal_id = p_journal.journal_id
                AND chain_position BETWEEN first_r.chain_position
                                       AND last_r.chain_position
              ORDER BY chain_position LOOP
        IF r.status = 'DELETED' THEN
            RAISE EXCEPTION 'CPF9801 Object % in library % not found.',
                r.receiver_name, r.receiver_library USING ERRCODE = '42704';
        END IF;
        IF r.status = 'FREED' THEN
            -- [U] the CPF id of a saved-and-freed receiver is to be checked.
            RAISE EXCEPTION 'CPF7053 Receiver % in library % saved with storage freed.',
                r.receiver_name, r.receiver_library USING ERRCODE = '55000';
        END IF;
        ids := ids || r.receiver_id;
    END LOOP;
    RETURN ids;
END $$;

CREATE OR REPLACE FUNCTION qsys2.display_journal(
    journal_library text,
    journal_name text,
    starting_receiver_library text DEFAULT '*LIBL',
    starting_receiver_name text DEFAULT '*CURRENT',
    starting_timestamp timestamp DEFAULT NULL,
    starting_sequence numeric DEFAULT NULL,
    journal_codes text DEFAULT NULL,
    journal_entry_types text DEFAULT NULL,
    object_library text DEFAULT NULL,
    object_name text DEFAULT NULL,
    object_objtype text DEFAULT NULL,
    object_member text DEFAULT NULL,
    "user" text DEFAULT NULL,
    job text DEFAULT NULL,
    program text DEFAULT NULL,
    ending_receiver_library text DEFAULT '*LIBL',
    ending_receiver_name text DEFAULT '*CURRENT',
    ending_timestamp timestamp DEFAULT NULL,
    ending_sequence numeric DEFAULT NULL,
    generate_syslog text DEFAULT NULL,
    eof_delay integer DEFAULT NULL,
    commit_cycle numeric DEFAULT NULL,
    include_internal text DEFAULT 'NO')
RETURNS SETOF qsys2.display_journal_row
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- The generic plan from the first call: a custom plan of the window query
-- took ~70 ms on a 378,000-entry receiver (the generic one under 1 ms), and
-- PostgreSQL makes five custom plans per session before it compares; a
-- waiting read re-runs the query every 10 ms.
SET plan_cache_mode = force_generic_plan
-- No JIT: the generic plan's cost grows with the receiver (its row estimates
-- come from the table's size), and past jit_above_cost (100,000, reached
-- near 2 million entries) PostgreSQL compiled the window query at EVERY
-- call: 20-25 ms of CPU for a query that runs in about 1 ms, on every window
-- and every waiting read (the waiting read's latency tail after a
-- 1,000,000-change run).
SET jit = off
AS $$
DECLARE
    jr qsys2.emu_journal;
    ids int[];
    bounds record;
    s_pos int;
    s_seq numeric;
    e_pos int;
    e_seq numeric;
    codes text[] := qsys2.emu_list(journal_codes);
    types text[] := qsys2.emu_list(journal_entry_types);
    objs text[] := qsys2.emu_list(object_name);
    obj_lib text := upper(trim(object_library));
    member text := upper(trim(object_member));
    objtype text := upper(trim(object_objtype));
    job_parts text[] := string_to_array(upper(trim(job)), '/');
    usr text := upper(trim(display_journal."user"));
    pgm text := upper(trim(program));
    wait_until timestamptz := clock_timestamp()
        + make_interval(secs => greatest(coalesce(eof_delay, 0), 0));
BEGIN
    SELECT * INTO jr FROM qsys2.emu_journal j
     WHERE j.journal_library = upper(trim(display_journal.journal_library))
       AND j.journal_name = upper(trim(display_journal.journal_name));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'CPF9801 Object % in library % not found.',
            upper(trim(display_journal.journal_name)),
            upper(trim(display_journal.journal_library)) USING ERRCODE = '42704';
    END IF;
    IF jr.latency_ms > 0 THEN
        PERFORM pg_sleep(jr.latency_ms / 1000.0);
    END IF;
    IF starting_sequence IS NOT NULL AND starting_timestamp IS NOT NULL THEN
        RAISE EXCEPTION 'CPF7054 Starting sequence and starting timestamp are exclusive.'
            USING ERRCODE = '22023';
    END IF;
    IF ending_sequence < starting_sequence
       AND upper(trim(coalesce(starting_receiver_name, '*CURRENT')))
           = upper(trim(coalesce(ending_receiver_name, '*CURRENT'))) THEN
        RAISE EXCEPTION 'CPF7054 Ending sequence % is before starting sequence %.',
            ending_sequence, starting_sequence USING ERRCODE = '22023';
    END IF;
    IF '*RCD' = ANY (types) THEN
        types := types || ARRAY['PT', 'PX', 'UB', 'UP', 'DL', 'BR', 'UR', 'DR', 'IL'];
    END IF;
    -- One pass without eof_delay; with it, passes until a row or the deadline.
    LOOP
        ids := qsys2.emu_receiver_range(jr, starting_receiver_library,
            starting_receiver_name, ending_receiver_library, ending_receiver_name);

        -- Start: first entry, in chain order, at or after the sequence / time.
        SELECT r.pos, e.sequence_number INTO s_pos, s_seq
          FROM unnest(ids) WITH ORDINALITY AS r(id, pos)
          JOIN LATERAL (
              SELECT x.sequence_number FROM qsys2.emu_entry x
               WHERE x.receiver_id = r.id
                 -- A bound the index can use (an OR on a parameter is not):
                 -- without it each call walked the receiver from its start.
                 AND x.sequence_number >= coalesce(starting_sequence, 0)
                 AND (starting_timestamp IS NULL OR x.entry_timestamp >= starting_timestamp)
               ORDER BY x.sequence_number LIMIT 1) e ON true
         ORDER BY r.pos LIMIT 1;
        IF s_pos IS NOT NULL THEN
            -- End: the first receiver whose last sequence reaches ending_sequence.
            e_pos := array_length(ids, 1);
            e_seq := NULL;
            IF ending_sequence IS NOT NULL THEN
                SELECT r.pos INTO bounds
                  FROM unnest(ids) WITH ORDINALITY AS r(id, pos)
                  JOIN qsys2.emu_receiver x ON x.receiver_id = r.id
                 WHERE x.last_sequence >= ending_sequence
                 ORDER BY r.pos LIMIT 1;
                IF FOUND THEN
                    e_pos := bounds.pos;
                    e_seq := ending_sequence;
                END IF;
                IF e_pos < s_pos OR (e_pos = s_pos AND e_seq < s_seq) THEN
                    RAISE EXCEPTION 'CPF7054 Ending sequence % is before starting sequence %.',
                        ending_sequence, s_seq USING ERRCODE = '22023';
                END IF;
            END IF;

            RETURN QUERY
            SELECT e.entry_timestamp, e.sequence_number, e.journal_code,
                   e.journal_entry_type, e.count_or_rrn, e.commit_cycle, e.object,
                   e.object_type, e.indicator_flag, e.job_name, e.job_user, e.job_number,
                   e.job_user, e.job_user, e.program_name, e.program_library,
                   rc.receiver_library, rc.receiver_name, e.null_value_indicators,
                   e.entry_data
              FROM unnest(ids) WITH ORDINALITY AS r(id, pos)
              JOIN qsys2.emu_receiver rc ON rc.receiver_id = r.id
              JOIN LATERAL (
                  SELECT * FROM qsys2.emu_entry x
                   WHERE x.receiver_id = r.id
                     -- Index bounds per receiver: from s_seq in the first,
                     -- up to e_seq in the last, whole receivers between.
                     AND x.sequence_number >= CASE WHEN r.pos = s_pos
                                                   THEN s_seq ELSE 0 END
                     AND x.sequence_number <= CASE WHEN r.pos = e_pos AND e_seq IS NOT NULL
                                                   THEN e_seq ELSE 1e21 END) e
                ON true
             WHERE r.pos BETWEEN s_pos AND e_pos
               AND (codes IS NULL OR e.journal_code = ANY (codes))
               AND (types IS NULL OR e.journal_entry_type = ANY (types))
               AND (obj_lib IS NULL OR substr(e.object, 11, 10) = obj_lib)
               AND (objs IS NULL OR rtrim(substr(e.object, 1, 10)) = ANY (objs))
               AND (member IS NULL OR member IN ('*ALL', '*FIRST')
                    OR rtrim(substr(e.object, 21, 10)) = member)
               AND (objtype IS NULL OR objtype = '*ALL'
                    OR (objtype = '*FILE' AND e.object_type IN ('*QDDS', '*QDDSI'))
                    OR e.object_type = objtype)
               AND (usr IS NULL OR e.job_user = usr)
               AND (pgm IS NULL OR e.program_name = pgm)
               AND (job_parts IS NULL OR (cardinality(job_parts) = 1 AND e.job_name = job_parts[1])
                    OR (cardinality(job_parts) = 3 AND e.job_number = job_parts[1]
                        AND e.job_user = job_parts[2] AND e.job_name = job_parts[3]))
               AND (display_journal.commit_cycle IS NULL
                    OR e.commit_cycle = display_journal.commit_cycle)
               AND (NOT e.hidden
                    OR upper(trim(coalesce(include_internal, 'NO'))) = 'YES')
               AND (ending_timestamp IS NULL OR e.entry_timestamp <= ending_timestamp)
             ORDER BY r.pos, e.sequence_number;
            -- FOUND: RETURN QUERY appended at least one row.
            EXIT WHEN FOUND;
        END IF;
        EXIT WHEN coalesce(eof_delay, 0) <= 0 OR clock_timestamp() >= wait_until;
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;

REVOKE ALL ON FUNCTION qsys2.display_journal(text, text, text, text, timestamp,
    numeric, text, text, text, text, text, text, text, text, text, text, text,
    timestamp, numeric, text, integer, numeric, text) FROM PUBLIC;
