"""The history: the store protocol and records, the writer sink, the restore at start-up, and the SQLite and
PostgreSQL backends.
"""
