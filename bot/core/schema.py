"""The job store's schema, as numbered migrations: each runs once, in order, in one transaction,
and `PRAGMA user_version` records how many have run. Append; never edit one that has shipped.
"""

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, per-chat settings, usage counters, bans, audit log, global settings
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        request TEXT NOT NULL,
        origin TEXT NOT NULL,
        platform TEXT NOT NULL,
        user_key TEXT NOT NULL,
        model TEXT NOT NULL,
        images INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        results TEXT,
        error TEXT,
        error_key TEXT,
        error_params TEXT,
        delivery TEXT NOT NULL DEFAULT 'pending',
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_status ON jobs (status, id);
    CREATE INDEX jobs_by_user ON jobs (user_key, id);
    CREATE INDEX jobs_undelivered ON jobs (platform, delivery, status);
    CREATE TABLE chat_settings (
        platform TEXT NOT NULL, chat_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (platform, chat_id, key)
    );
    CREATE TABLE usage (
        user_key TEXT NOT NULL, hour INTEGER NOT NULL, jobs INTEGER NOT NULL, images INTEGER NOT NULL,
        PRIMARY KEY (user_key, hour)
    );
    CREATE TABLE bans (
        user_key TEXT PRIMARY KEY, reason TEXT NOT NULL, banned_by TEXT NOT NULL, created_at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, detail TEXT NOT NULL
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: what the scheduler needs as columns (no JSON decoded to rebuild the queue), and a user's
    # unfinished jobs found without reading their whole history (quotas, /queue, /cancel)
    """
    ALTER TABLE jobs ADD COLUMN steps INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN batch_key TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET steps = json_extract(request, '$.steps'),
                    batch_key = json_array(json_extract(request, '$.model'), json_extract(request, '$.width'),
                                           json_extract(request, '$.height'), json_extract(request, '$.steps'),
                                           json_extract(request, '$.guidance'), json_extract(request, '$.scheduler'),
                                           json(CASE WHEN json_extract(request, '$.init_image') IS NULL
                                                     THEN 'false' ELSE 'true' END),
                                           json_extract(request, '$.strength')),
                    is_admin = COALESCE(json_extract(origin, '$.is_admin'), 0);
    CREATE INDEX jobs_by_user_status ON jobs (user_key, status, id);
    """,
    # 3: an opaque public id per job (96 random bits): the integer id stays internal, and whoever
    # holds the public id may read the job (a capability); the client address of web and API jobs,
    # which has limits of its own
    """
    ALTER TABLE jobs ADD COLUMN public_id TEXT;
    UPDATE jobs SET public_id = lower(hex(randomblob(12))) WHERE public_id IS NULL;
    CREATE UNIQUE INDEX jobs_by_public_id ON jobs (public_id);
    ALTER TABLE jobs ADD COLUMN address TEXT NOT NULL DEFAULT '';
    CREATE INDEX jobs_by_address_status ON jobs (address, status) WHERE address != '';
    """,
    # 4: password accounts ([web] auth = "password"): users with scrypt hashes, and sessions by a
    # hash of their token (the token itself lives only in the browser's cookie)
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, is_admin INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        created_at REAL NOT NULL, expires_at REAL NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions (user_name);
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);
    """,
)
