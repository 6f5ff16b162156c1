"""The hub side of the relay: the sink leg and the ODH tables it writes.

- :mod:`appliance.hub.sink`: Kafka changes -> PostgreSQL, then confirmations.
- :mod:`appliance.hub.odh`: the ODH DDL, the guarded row writes and the reads.
"""
