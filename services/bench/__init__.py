"""The bench of issue 8: how close tongban comes to what Kafka and PostgreSQL allow here.

`python -m services.bench --help`; `make bench` runs all of it on a stack of its own.
"""
