"""A test kit for services built on `core`: start a declared service the way `mesh serve`
would, on 127.0.0.1:0 with its real components, and test it through its typed client.

- `core.testing.services`: `serving(...)` starts declared services in one process and
  hands back a `Running` (its address, its typed clients, a bounded wait for events);
  `settings_for(...)` gives a test server's settings.
- `core.testing.doubles`: the container that lets a test double take a component's place.
- `core.testing.databases`: a fresh database per test (SQLite, or PostgreSQL when
  configured) and the cleanup of a test's Redis keys.
- `core.testing.plugin`: the pytest plugin (entry point `pytest11`), whose fixtures
  (`start_service`, `mesh_settings`, `mesh_database_url`, `mesh_redis_url`,
  `mesh_postgres_url`) live in `core.testing.fixtures`.

A service's test, with pytest and pytest-asyncio::

    @pytest.fixture
    async def notes(start_service: StartService) -> NotesClient:
        service = await start_service(SERVICE)   # a ServiceDeclaration, or its name
        return await service.client()            # closed before the server stops

    async def test_a_created_note_is_announced(start_service: StartService) -> None:
        service = await start_service("notes")
        client = await service.client()
        note = await client.create_note(title="Groceries")
        event = await service.wait_for_event("notes.v1.note.created")
        assert event.subject == note.name

This package imports nothing itself: pytest loads the plugin in every run.
"""
