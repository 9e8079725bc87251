"""The relational database: the `Database` component over SQLAlchemy (SQLite embedded,
PostgreSQL distributed), its pool and errors, the asyncpg fast path, SQLite's tuning,
schema migrations with Alembic, and the signed page tokens of every list (resources and
events)."""
