"""who claimed a delivery for sending, and when

A delivery in ``sending`` names the host and process id of the node sending it, so a node
sharing the index settles only what an ended node left. Existing rows name nobody.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 05:00:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_host', sa.String(length=255), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('claimed_pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('claimed_pid')
        batch_op.drop_column('claimed_host')
