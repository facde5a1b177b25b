"""The SQL both engines share, written once, as Django's backends or SQLAlchemy's dialects share theirs.

A write or a read that is the same logic on SQLite and PostgreSQL lives here as an `Ops` generator
(ops.py): it yields each statement it needs, written with `?` placeholders, and is sent back its result.
It never touches a connection, so one piece of logic runs on SQLite's writer thread (synchronously) and on
an asyncpg connection (asynchronously) alike; each engine has a small driver that runs it (`run` in
sqlite/driver.py and postgres/driver.py). Where the dialects differ, the logic asks its `Dialect`
(dialect.py): a few words of SQL (row locks, the greatest of two values, a chat's channels as JSON) and a
few steps (claiming an identifier). What is truly one engine's own stays in its subpackage: SQLite's writer
thread, group commit and FTS5 search; PostgreSQL's batched append (`chatdock_append`) and its tsvector search.

- ops.py: the statements a generator yields, and `Undo`;
- dialect.py: what differs between the engines' SQL;
- queries.py: the statements behind the reads;
- writes.py: the writes other than appends (organizations, contacts, channels, chats, identity, forget);
- backend.py: `SQLBackend`, the `Backend` methods that are the same on both engines, and the one write
  lifecycle (run, retried by the engine, then announce what committed);
- migrations.py: the migration format and how both engines apply them.
"""
