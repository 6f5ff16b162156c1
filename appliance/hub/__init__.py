"""The hub side of the relay: the sink leg and the ODH tables it writes.

- :mod:`appliance.hub.sink`: Kafka changes -> PostgreSQL, then confirmations.
- :mod:`appliance.hub.odh`: the ODH DDL, the guarded row writes and the reads.
- :mod:`appliance.hub.guardian`: the guardian's hub end (docs/guardian.md 6):
  checksums compared with the ODH, narrow/repair/done requests to the store.
"""
