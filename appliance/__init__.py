"""Store relay appliance: IBM i journal -> Kafka -> Operational Data Hub."""

__version__ = "0.1.0"
