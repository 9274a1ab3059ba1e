"""completion signals, routing rules, outbox states, web users, counters

Existing rows get empty strings, priority 0 and the migration time as retry horizon start.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 03:47:18.243652
"""

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('counters',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retry_since', sa.DateTime(), nullable=False, server_default=sa.func.current_timestamp()))
        batch_op.alter_column('last_status',
               existing_type=sa.VARCHAR(length=128),
               type_=sa.String(length=256),
               existing_nullable=False)

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('association', sa.String(length=32), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('image_type', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('orientation', sa.String(length=8), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('slice_position', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('slice_thickness', sa.Float(), nullable=True))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rule', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('priority', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('destinations', sa.JSON(), nullable=True))

    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expected_instances', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('released_association', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('released_at', sa.DateTime(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('released_at')
        batch_op.drop_column('released_association')
        batch_op.drop_column('expected_instances')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('destinations')
        batch_op.drop_column('priority')
        batch_op.drop_column('rule')

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('slice_thickness')
        batch_op.drop_column('slice_position')
        batch_op.drop_column('orientation')
        batch_op.drop_column('image_type')
        batch_op.drop_column('association')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.alter_column('last_status',
               existing_type=sa.String(length=256),
               type_=sa.VARCHAR(length=128),
               existing_nullable=False)
        batch_op.drop_column('retry_since')

    op.drop_table('users')
    op.drop_table('counters')
