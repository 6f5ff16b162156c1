"""The guardian's store end: compare the store's tables with ODH, repair them.

``digest`` (the hashes both ends compute), ``reader`` (rows through the
miner's ODBC boundary, as the relay ships them), ``bracket`` (what "the same
logical point" means in the pipeline database), ``parts`` (checksums and
answers to the hub) and ``leg`` (the ``control`` leg). The contract with the
hub end is docs/guardian.md.
"""
