"""Operators' commands on the event streams: `tongban tail`, `tongban lag`, `tongban dlq`.

Pure pieces (record views, filters, the time-order merge buffer, rendering) are kept apart
from the Kafka I/O so that they are tested without a broker.
"""
