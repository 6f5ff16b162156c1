"""The fault harness and the checker of issue 4 (see docs/faults.md).

- :mod:`.harness`: one run: own services, workload, faults, drain, check;
- :mod:`.kinds`: the fault kinds, each bounded and undone by itself;
- :mod:`.legs`: the supervisor that restarts legs, and lock-aimed kills;
- :mod:`.proxy`: the loopback TCP fault proxy between shipper and broker;
- :mod:`.checker`: accounts for every journal entry; history triggers;
- :mod:`.reflash`: a replaced box with an empty outbox.
"""
