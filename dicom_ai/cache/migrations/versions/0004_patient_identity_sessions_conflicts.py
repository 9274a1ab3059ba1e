"""patient identity (issuer, birth date, sex), revocable web sessions, identity conflicts

Existing patients get empty issuer, birth date and sex; existing users session version 1.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 13:20:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('birth_date', sa.String(length=8), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('sex', sa.String(length=16), nullable=False, server_default=''))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_version', sa.Integer(), nullable=False, server_default='1'))
    op.create_table('identity_conflicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('calling_ae_title', sa.String(length=16), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('identity_conflicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_identity_conflicts_at'), ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('identity_conflicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_identity_conflicts_at'))
    op.drop_table('identity_conflicts')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('session_version')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_column('sex')
        batch_op.drop_column('birth_date')
        batch_op.drop_column('issuer_of_patient_id')
