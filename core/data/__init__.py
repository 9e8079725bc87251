"""The relational database: the `Database` component over SQLAlchemy (SQLite embedded,
PostgreSQL distributed), its pool and errors, the asyncpg fast path, SQLite's tuning, and
schema migrations with Alembic."""
