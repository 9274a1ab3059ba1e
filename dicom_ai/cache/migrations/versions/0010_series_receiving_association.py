"""the association still sending a series

A series names the association (``<pid>-<n>@<host>``) that brought its newest instance until
that association is released or aborted, so the idle timer does not complete a series while
its sender is still connected. Existing series name none.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 05:30:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('receiving_association', sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('receiving_association')
