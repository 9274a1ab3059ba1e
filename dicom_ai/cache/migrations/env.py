"""Alembic environment: runs on the connection :func:`dicom_ai.cache.db.migrate` passes in."""

from alembic import context

from dicom_ai.cache.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters by copy
with context.begin_transaction():
    context.run_migrations()
