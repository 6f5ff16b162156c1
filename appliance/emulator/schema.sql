-- The IBM i emulator's SQL surface, in PostgreSQL database `ibmi`.
--
-- Readers (the miner, the transformer, the guardian) see only what DB2 for i
-- shows: the table function qsys2.display_journal and the catalog views
-- qsys2.journal_info, journal_receiver_info, journaled_objects, syscolumns2,
-- systables, syskeycst. The emu_* tables behind them are private to the
-- writer (appliance.emulator) and closed to PUBLIC.
--
-- Invariants:
-- * within one receiver, sequence numbers strictly increase; across a
--   SEQOPT(*RESET) they restart at 1, so (chain position, sequence) is the
--   order of the journal;
-- * an entry is written in the same PostgreSQL transaction as the data
--   change it records, and the journal row is locked from allocation to
--   commit, so entries become visible in sequence order;
-- * a deleted receiver keeps its row (status DELETED, hidden from the views)
--   so a range crossing it fails with CPF9801 instead of skipping entries.
-- Idempotent: every statement may run again on an installed database.

CREATE SCHEMA IF NOT EXISTS qsys2;
CREATE SCHEMA IF NOT EXISTS mag;

CREATE TABLE IF NOT EXISTS qsys2.emu_journal (
    journal_id serial PRIMARY KEY,
    journal_library varchar(10) NOT NULL,
    journal_name varchar(10) NOT NULL,
    receiver_prefix varchar(6) NOT NULL,
    attached_receiver_id int,
    next_sequence numeric(21, 0) NOT NULL DEFAULT 1,
    maximum_sequence numeric(21, 0) NOT NULL DEFAULT 9999999999,
    receiver_size_option varchar(10) NOT NULL DEFAULT '*MAXOPT2',
    manage_receiver_option varchar(10) NOT NULL DEFAULT '*SYSTEM',
    delete_receiver_option varchar(10) NOT NULL DEFAULT '*NO',
    minimize_entry_data varchar(10) NOT NULL DEFAULT '*NONE',
    time_zone text NOT NULL,
    latency_ms int NOT NULL DEFAULT 0,
    receiver_retention varchar(20) NOT NULL DEFAULT '*NOMAX',
    glitch_null_attach_reads int NOT NULL DEFAULT 0,
    glitch_stale_last_reads int NOT NULL DEFAULT 0,
    glitch_stale_by int NOT NULL DEFAULT 3,
    UNIQUE (journal_library, journal_name)
);

CREATE TABLE IF NOT EXISTS qsys2.emu_receiver (
    receiver_id serial PRIMARY KEY,
    journal_id int NOT NULL REFERENCES qsys2.emu_journal,
    receiver_library varchar(10) NOT NULL,
    receiver_name varchar(10) NOT NULL,
    chain_position int NOT NULL,
    chain_number int NOT NULL DEFAULT 1,
    status varchar(10) NOT NULL,
    attach_timestamp timestamp,
    detach_timestamp timestamp,
    first_sequence numeric(21, 0),
    last_sequence numeric(21, 0),
    entries bigint NOT NULL DEFAULT 0,
    sequence_reset boolean NOT NULL DEFAULT false,
    previous_receiver_library varchar(10),
    previous_receiver_name varchar(10),
    next_receiver_library varchar(10),
    next_receiver_name varchar(10),
    UNIQUE (journal_id, chain_position)
);
CREATE UNIQUE INDEX IF NOT EXISTS emu_receiver_live_name
    ON qsys2.emu_receiver (receiver_library, receiver_name)
    WHERE status <> 'DELETED';

CREATE TABLE IF NOT EXISTS qsys2.emu_entry (
    receiver_id int NOT NULL REFERENCES qsys2.emu_receiver,
    sequence_number numeric(21, 0) NOT NULL,
    entry_timestamp timestamp(6) NOT NULL,
    journal_code char(1) NOT NULL,
    journal_entry_type char(2) NOT NULL,
    count_or_rrn numeric(21, 0) NOT NULL DEFAULT 0,
    commit_cycle numeric(21, 0) NOT NULL DEFAULT 0,
    object char(30) NOT NULL DEFAULT '',
    object_type varchar(10) NOT NULL DEFAULT '',
    indicator_flag char(1) NOT NULL DEFAULT '0',
    job_name varchar(10) NOT NULL,
    job_user varchar(10) NOT NULL,
    job_number varchar(6) NOT NULL,
    program_name varchar(10) NOT NULL,
    program_library varchar(10) NOT NULL DEFAULT '',
    null_value_indicators varchar(8000) NOT NULL DEFAULT '',
    entry_data bytea NOT NULL DEFAULT '',
    PRIMARY KEY (receiver_id, sequence_number)
);
-- Hidden internal entries (brief §3.1): they take sequence numbers but
-- DISPLAY_JOURNAL shows them only with INCLUDE_INTERNAL => 'YES'.
ALTER TABLE qsys2.emu_entry ADD COLUMN IF NOT EXISTS hidden boolean
    NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS qsys2.emu_open_cycle (
    journal_id int NOT NULL REFERENCES qsys2.emu_journal,
    commit_cycle numeric(21, 0) NOT NULL,
    receiver_id int NOT NULL,
    job text NOT NULL,
    PRIMARY KEY (journal_id, receiver_id, commit_cycle)
);

CREATE TABLE IF NOT EXISTS qsys2.emu_table (
    system_table_schema varchar(10) NOT NULL,
    system_table_name varchar(10) NOT NULL,
    table_schema varchar(128) NOT NULL,
    table_name varchar(128) NOT NULL,
    journal_id int NOT NULL REFERENCES qsys2.emu_journal,
    journal_images varchar(6) NOT NULL DEFAULT '*BOTH',
    record_length int NOT NULL,
    journaled boolean NOT NULL DEFAULT true,
    PRIMARY KEY (system_table_schema, system_table_name)
);

CREATE TABLE IF NOT EXISTS qsys2.emu_column (
    system_table_schema varchar(10) NOT NULL,
    system_table_name varchar(10) NOT NULL,
    ordinal_position int NOT NULL,
    column_name varchar(128) NOT NULL,
    system_column_name varchar(10) NOT NULL,
    data_type varchar(8) NOT NULL,
    length int NOT NULL,
    numeric_scale int,
    ccsid int,
    is_nullable char(1) NOT NULL,
    storage int NOT NULL,
    key_position int,
    PRIMARY KEY (system_table_schema, system_table_name, ordinal_position),
    FOREIGN KEY (system_table_schema, system_table_name) REFERENCES qsys2.emu_table
);

REVOKE ALL ON ALL TABLES IN SCHEMA qsys2 FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA qsys2 FROM PUBLIC;

-- ---------------------------------------------------------------- views --

CREATE OR REPLACE VIEW qsys2.journal_info AS
SELECT j.journal_library, j.journal_name,
       r.receiver_library AS attached_journal_receiver_library,
       r.receiver_name AS attached_journal_receiver_name,
       (SELECT count(*) FROM qsys2.emu_receiver x
         WHERE x.journal_id = j.journal_id AND x.status <> 'DELETED')
         AS number_journal_receivers,
       j.delete_receiver_option, j.manage_receiver_option,
       j.receiver_size_option,
       j.minimize_entry_data AS minimize_entry_specific_data,
       'ACTIVE'::varchar(10) AS journal_state,
       j.time_zone,
       j.receiver_retention
  FROM qsys2.emu_journal j
  LEFT JOIN qsys2.emu_receiver r ON r.receiver_id = j.attached_receiver_id;

CREATE OR REPLACE VIEW qsys2.journal_receiver_info AS
SELECT r.receiver_library AS journal_receiver_library,
       r.receiver_name AS journal_receiver_name,
       j.journal_library, j.journal_name, r.status,
       r.attach_timestamp, r.detach_timestamp,
       NULL::timestamp AS save_timestamp,
       r.first_sequence AS first_sequence_number,
       r.last_sequence AS last_sequence_number,
       r.previous_receiver_library AS previous_journal_receiver_library,
       r.previous_receiver_name AS previous_journal_receiver,
       r.next_receiver_library AS next_journal_receiver_library,
       r.next_receiver_name AS next_journal_receiver,
       r.entries AS number_of_journal_entries,
       CASE WHEN EXISTS (SELECT 1 FROM qsys2.emu_open_cycle o
                          WHERE o.receiver_id = r.receiver_id)
            THEN 'YES' ELSE 'NO' END::varchar(3) AS pending_transactions
  FROM qsys2.emu_receiver r
  JOIN qsys2.emu_journal j ON j.journal_id = r.journal_id
 WHERE r.status <> 'DELETED';

CREATE OR REPLACE VIEW qsys2.journaled_objects AS
SELECT t.system_table_schema AS object_library,
       t.system_table_name AS object_name,
       '*FILE'::varchar(10) AS object_type,
       j.journal_library, j.journal_name, t.journal_images
  FROM qsys2.emu_table t
  JOIN qsys2.emu_journal j ON j.journal_id = t.journal_id
 WHERE t.journaled;  -- ENDJRNPF takes a file out of the view

CREATE OR REPLACE VIEW qsys2.systables AS
SELECT t.table_schema, t.table_name, t.system_table_schema, t.system_table_name,
       'P'::char(1) AS table_type,
       (SELECT count(*) FROM qsys2.emu_column c
         WHERE c.system_table_schema = t.system_table_schema
           AND c.system_table_name = t.system_table_name)::int AS column_count,
       t.record_length AS row_length
  FROM qsys2.emu_table t;

CREATE OR REPLACE VIEW qsys2.syscolumns2 AS
SELECT t.table_schema, t.table_name, c.system_table_schema, c.system_table_name,
       c.column_name, c.system_column_name, c.ordinal_position, c.data_type,
       c.length, c.numeric_scale,
       CASE WHEN c.data_type IN ('DECIMAL', 'NUMERIC', 'SMALLINT', 'INTEGER',
                                 'BIGINT') THEN c.length END AS numeric_precision,
       c.ccsid, c.is_nullable, c.storage,
       CASE WHEN c.data_type = 'DATE' THEN '*ISO' END::varchar(4) AS date_format,
       CASE WHEN c.data_type = 'DATE' THEN '-' END::char(1) AS date_separator,
       CASE WHEN c.data_type = 'TIME' THEN '*ISO' END::varchar(4) AS time_format,
       CASE WHEN c.data_type = 'TIME' THEN '.' END::char(1) AS time_separator,
       CASE WHEN c.data_type = 'TIMESTMP' THEN 6 END AS datetime_precision,
       'N'::char(1) AS hidden
  FROM qsys2.emu_column c
  JOIN qsys2.emu_table t ON t.system_table_schema = c.system_table_schema
                        AND t.system_table_name = c.system_table_name;

CREATE OR REPLACE VIEW qsys2.syskeycst AS
SELECT t.table_schema AS constraint_schema,
       (t.table_name || '_PK')::varchar(128) AS constraint_name,
       t.table_schema, t.table_name, t.system_table_schema, t.system_table_name,
       c.column_name, c.system_column_name, c.key_position AS ordinal_position,
       c.ordinal_position AS column_position,
       'PRIMARY KEY'::varchar(11) AS constraint_type
  FROM qsys2.emu_column c
  JOIN qsys2.emu_table t ON t.system_table_schema = c.system_table_schema
                        AND t.system_table_name = c.system_table_name
 WHERE c.key_position IS NOT NULL;

-- ---------------------------------------------------------- the writer --

-- Append entries to the attached receiver of a journal. A 'SC' entry opens a
-- commit cycle whose id is its own sequence number; the following entries of
-- the same call carry it. 'CM'/'RB' close the cycle p_cycle. p_gap hidden
-- internal entries are written first, never before a receiver's first entry. Returns the sequence numbers written, in order.
CREATE OR REPLACE FUNCTION qsys2.emu_emit(
    p_journal_id int, p_gap int, p_timestamp timestamp, p_job text[],
    p_cycle numeric, p_codes text[], p_types text[], p_objects text[],
    p_rrns numeric[], p_flags text[], p_null_maps text[], p_data bytea[])
RETURNS numeric[]
LANGUAGE plpgsql AS $$
DECLARE
    j qsys2.emu_journal;
    rcv qsys2.emu_receiver;
    seq numeric;
    cycle numeric := p_cycle;
    written numeric[] := '{}';
BEGIN
    SELECT * INTO j FROM qsys2.emu_journal WHERE journal_id = p_journal_id
       FOR UPDATE;
    SELECT * INTO rcv FROM qsys2.emu_receiver
     WHERE receiver_id = j.attached_receiver_id;
    seq := j.next_sequence;
    IF rcv.entries > 0 THEN
        -- p_gap hidden internal entries first: journal code J, type IE
        -- (the emulator's convention; IBM does not document their codes).
        FOR h IN 1 .. p_gap LOOP
            INSERT INTO qsys2.emu_entry (receiver_id, sequence_number,
                entry_timestamp, journal_code, journal_entry_type, job_name,
                job_user, job_number, program_name, hidden)
            VALUES (rcv.receiver_id, seq, p_timestamp, 'J', 'IE', 'QSYSARB',
                'QSYS', '000000', 'QJOINTNL', true);
            seq := seq + 1;
        END LOOP;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_types, 1), 0) LOOP
        IF seq > j.maximum_sequence THEN
            RAISE EXCEPTION 'CPF7003 Entry not journaled to journal %/%: reason 4, sequence % beyond maximum %',
                j.journal_library, j.journal_name, seq, j.maximum_sequence
                USING ERRCODE = '57011';
        END IF;
        IF p_types[i] = 'SC' THEN
            cycle := seq;
            INSERT INTO qsys2.emu_open_cycle VALUES (p_journal_id, seq, rcv.receiver_id,
                p_job[3] || '/' || p_job[2] || '/' || p_job[1]);
        ELSIF p_types[i] IN ('CM', 'RB') AND p_codes[i] = 'C' THEN
            DELETE FROM qsys2.emu_open_cycle
             WHERE journal_id = p_journal_id AND commit_cycle = cycle;
        END IF;
        INSERT INTO qsys2.emu_entry (receiver_id, sequence_number, entry_timestamp,
            journal_code, journal_entry_type, count_or_rrn, commit_cycle, object,
            object_type, indicator_flag, job_name, job_user, job_number,
            program_name, program_library, null_value_indicators, entry_data)
        VALUES (rcv.receiver_id, seq, p_timestamp, p_codes[i], p_types[i],
            coalesce(p_rrns[i], 0), coalesce(cycle, 0), coalesce(p_objects[i], ''),
            CASE WHEN p_objects[i] <> '' THEN '*QDDS' ELSE '' END,
            p_flags[i], p_job[1], p_job[2], p_job[3], p_job[4], p_job[5],
            coalesce(p_null_maps[i], ''), coalesce(p_data[i], ''::bytea));
        written := written || seq;
        seq := seq + 1;
    END LOOP;
    UPDATE qsys2.emu_journal SET next_sequence = seq WHERE journal_id = p_journal_id;
    UPDATE qsys2.emu_receiver
       SET first_sequence = coalesce(first_sequence, written[1]),
           last_sequence = seq - 1,
           entries = entries + coalesce(array_length(written, 1), 0)
     WHERE receiver_id = rcv.receiver_id;
    RETURN written;
END $$;

REVOKE ALL ON FUNCTION qsys2.emu_emit(int, int, timestamp, text[], numeric,
    text[], text[], text[], numeric[], text[], text[], bytea[]) FROM PUBLIC;
