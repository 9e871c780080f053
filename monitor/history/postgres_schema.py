"""The PostgreSQL history's schema: its migrations, in order (version N is ``MIGRATIONS[N - 1]``).

Apart from :mod:`monitor.history.postgres`, which applies them under its advisory lock at open: a
migration is fixed text, written once and never changed after it has shipped (a database at that
version already ran it), so the schema's history reads in one place.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: endpoints, ICMP cycles, throughput tests (as SQLite's version 1)
    """
    CREATE TABLE endpoints (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        district TEXT NOT NULL,
        link TEXT NOT NULL,
        grp TEXT NOT NULL,
        target_bps DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE icmp (
        endpoint_id BIGINT NOT NULL REFERENCES endpoints(id),
        started_at DOUBLE PRECISION NOT NULL,
        address TEXT,
        sent INTEGER NOT NULL,
        rtts BYTEA NOT NULL,
        error TEXT,
        error_detail TEXT,
        PRIMARY KEY (endpoint_id, started_at)
    );
    CREATE TABLE throughput (
        endpoint_id BIGINT NOT NULL REFERENCES endpoints(id),
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL,
        method TEXT NOT NULL,
        address TEXT,
        download_bps DOUBLE PRECISION,
        upload_bps DOUBLE PRECISION,
        bytes BIGINT NOT NULL,
        directions TEXT NOT NULL,
        target_bps DOUBLE PRECISION NOT NULL,
        target_upload_bps DOUBLE PRECISION,
        target_met BOOLEAN,
        error TEXT,
        error_detail TEXT,
        budget_remaining BIGINT,
        PRIMARY KEY (endpoint_id, started_at)
    );
    """,
    # 2: roll-out (issue 11), as SQLite's version 2: status, planned date, provider, contract, first result
    """
    ALTER TABLE endpoints ADD COLUMN status TEXT NOT NULL DEFAULT 'connected';
    ALTER TABLE endpoints ADD COLUMN planned_date DATE;
    ALTER TABLE endpoints ADD COLUMN provider TEXT;
    ALTER TABLE endpoints ADD COLUMN contracted_bps DOUBLE PRECISION;
    ALTER TABLE endpoints ADD COLUMN first_result_at DOUBLE PRECISION;
    UPDATE endpoints e SET first_result_at = LEAST(
        (SELECT MIN(started_at) FROM icmp i WHERE i.endpoint_id = e.id),
        (SELECT MIN(started_at) FROM throughput t WHERE t.endpoint_id = e.id));
    """,
    # 3: agent sites' classified silences (issue 10), as SQLite's version 3
    """
    CREATE TABLE gaps (
        endpoint_id BIGINT NOT NULL REFERENCES endpoints(id),
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL,
        cause TEXT NOT NULL,
        interval_seconds DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (endpoint_id, started_at)
    );
    CREATE INDEX gaps_ended_at ON gaps (ended_at);
    """,
    # 4: maintenance windows opened through the API, and traces (issue 21), as SQLite's version 4
    """
    CREATE TABLE maintenance (
        id BIGSERIAL PRIMARY KEY,
        target TEXT NOT NULL,
        target_kind TEXT NOT NULL,
        starts_at DOUBLE PRECISION NOT NULL,
        ends_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        opened_at DOUBLE PRECISION NOT NULL,
        closed_at DOUBLE PRECISION
    );
    CREATE INDEX maintenance_ends_at ON maintenance (ends_at);
    CREATE TABLE traces (
        endpoint_id BIGINT NOT NULL REFERENCES endpoints(id),
        at DOUBLE PRECISION NOT NULL,
        hops TEXT NOT NULL,
        last_answering_hop TEXT,
        reached BOOLEAN NOT NULL,
        PRIMARY KEY (endpoint_id, at)
    );
    """,
    # 5: latency under load (issue 20), as SQLite's version 5: the site's max_added_latency when tested
    """
    ALTER TABLE throughput ADD COLUMN max_added_latency DOUBLE PRECISION;
    """,
    # 6: enrolment (issue 18), as SQLite's version 6: enrolled agents' token hashes and their one-time codes
    """
    CREATE TABLE agent_tokens (
        site TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        issued_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE agent_invites (
        code_sha256 TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    );
    """,
    # 7: replicas (issue 19), PostgreSQL only: each instance's own cycles, kept apart and merged when read.
    # The agents' cycles keep instance '' (the site measured them once, whichever instance took them).
    """
    ALTER TABLE icmp ADD COLUMN instance TEXT NOT NULL DEFAULT '';
    ALTER TABLE icmp DROP CONSTRAINT icmp_pkey;
    ALTER TABLE icmp ADD PRIMARY KEY (endpoint_id, started_at, instance);
    """,
    # 8: agents served by any instance (issue 19), PostgreSQL only: the sequence positions and throughput
    # slot grants, shared by every instance behind one centre URL
    """
    CREATE TABLE agent_sequences (
        site TEXT NOT NULL,
        agent_instance TEXT NOT NULL,
        seq BIGINT NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (site, agent_instance)
    );
    CREATE TABLE agent_refusals (
        site TEXT NOT NULL,
        agent_instance TEXT NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (site, agent_instance, seq)
    );
    CREATE TABLE throughput_slots (
        slot_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        granted_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        instance TEXT NOT NULL DEFAULT '',
        download_bytes BIGINT NOT NULL DEFAULT 0,
        upload_bytes BIGINT NOT NULL DEFAULT 0
    );
    """,
    # 9: one throughput test per site among its replicas (issue 19), PostgreSQL only: live instances and leases
    """
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    """,
)
