"""a job's task queue and when it was handed to the task engine

Existing jobs get queue "" (the default one) and no dispatch time.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 02:15:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queue', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('dispatched_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('dispatched_at')
        batch_op.drop_column('queue')
