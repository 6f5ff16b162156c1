-- Journal behaviours of domain brief §9 that the base schema does not play:
-- member journaling on/off (F EJ / F JM), saved-and-freed receivers, and
-- the two QSYS2.JOURNAL_RECEIVER_INFO glitches public readers tripped on.
--
-- Invariants:
-- * a glitch is armed for a number of reads of JOURNAL_RECEIVER_INFO (one
--   read = one poll of a reader); each read of the view spends one, so a
--   reader that polls again sees the truth;
-- * the NULL attach timestamp glitch shows the attached receiver with a NULL
--   ATTACH_TIMESTAMP (jhc PR #55); the stale LAST_SEQUENCE glitch shows the
--   receiver detached last with LAST_SEQUENCE_NUMBER lowered by
--   glitch_stale_by (jhc PR #83);
-- * a FREED receiver (saved with STG(*FREE)) keeps its row and chain links
--   but no entries; reading a range over it fails.
-- Idempotent, like schema.sql.

-- The rows of JOURNAL_RECEIVER_INFO, spending one read of each armed glitch.
CREATE OR REPLACE FUNCTION qsys2.emu_receiver_rows()
RETURNS TABLE (
    journal_receiver_library varchar(10), journal_receiver_name varchar(10),
    journal_library varchar(10), journal_name varchar(10), status varchar(10),
    attach_timestamp timestamp, detach_timestamp timestamp,
    save_timestamp timestamp, first_sequence_number numeric(21, 0),
    last_sequence_number numeric(21, 0),
    previous_journal_receiver_library varchar(10),
    previous_journal_receiver varchar(10),
    next_journal_receiver_library varchar(10), next_journal_receiver varchar(10),
    number_of_journal_entries bigint, pending_transactions varchar(3))
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT r.receiver_library, r.receiver_name, j.journal_library, j.journal_name,
           r.status,
           CASE WHEN j.glitch_null_attach_reads > 0
                 AND r.receiver_id = j.attached_receiver_id
                THEN NULL ELSE r.attach_timestamp END,
           r.detach_timestamp,
           CASE WHEN r.status IN ('SAVED', 'FREED') THEN r.detach_timestamp END,
           r.first_sequence,
           CASE WHEN j.glitch_stale_last_reads > 0
                 AND r.receiver_id <> j.attached_receiver_id
                 AND r.next_receiver_name = a.receiver_name
                THEN greatest(r.first_sequence, r.last_sequence - j.glitch_stale_by)
                ELSE r.last_sequence END,
           r.previous_receiver_library, r.previous_receiver_name,
           r.next_receiver_library, r.next_receiver_name, r.entries,
           (CASE WHEN EXISTS (SELECT 1 FROM qsys2.emu_open_cycle o
                               WHERE o.receiver_id = r.receiver_id)
                 THEN 'YES' ELSE 'NO' END)::varchar(3)
      FROM qsys2.emu_receiver r
      JOIN qsys2.emu_journal j ON j.journal_id = r.journal_id
      LEFT JOIN qsys2.emu_receiver a ON a.receiver_id = j.attached_receiver_id
     WHERE r.status <> 'DELETED';
    UPDATE qsys2.emu_journal
       SET glitch_null_attach_reads = greatest(glitch_null_attach_reads - 1, 0),
           glitch_stale_last_reads = greatest(glitch_stale_last_reads - 1, 0)
     WHERE glitch_null_attach_reads > 0 OR glitch_stale_last_reads > 0;
END $$;

-- The casts keep the column types of schema.sql's first definition (a
-- function result loses the varchar lengths).
CREATE OR REPLACE VIEW qsys2.journal_receiver_info AS
SELECT f.journal_receiver_library::varchar(10),
       f.journal_receiver_name::varchar(10),
       f.journal_library::varchar(10), f.journal_name::varchar(10),
       f.status::varchar(10), f.attach_timestamp, f.detach_timestamp,
       f.save_timestamp, f.first_sequence_number::numeric(21, 0),
       f.last_sequence_number::numeric(21, 0),
       f.previous_journal_receiver_library::varchar(10),
       f.previous_journal_receiver::varchar(10),
       f.next_journal_receiver_library::varchar(10),
       f.next_journal_receiver::varchar(10),
       f.number_of_journal_entries, f.pending_transactions::varchar(3)
  FROM qsys2.emu_receiver_rows() AS f;

