"""64-bit keys, references and counts on PostgreSQL

PostgreSQL's INTEGER (and the sequence behind each SERIAL key) is 32-bit; the index's keys,
the references to them, instance sizes and the counters become BIGINT there. SQLite's INTEGER
already holds 64 bits: nothing changes on SQLite.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 02:10:00
"""

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = {
    'counters': ['value'],
    'identity_conflicts': ['id'],
    'model_events': ['id'],
    'model_versions': ['id'],
    'patients': ['id'],
    'users': ['id'],
    'studies': ['id', 'patient_fk'],
    'series': ['id', 'study_fk'],
    'instances': ['id', 'series_fk', 'size'],
    'jobs': ['id', 'series_fk'],
    'results': ['id', 'job_fk'],
    'reviews': ['id', 'job_fk'],
    'deliveries': ['id', 'result_fk'],
}


def _retype(old: sa.types.TypeEngine, new: sa.types.TypeEngine, sequence: str) -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=new, existing_type=old)
        if 'id' in columns:
            op.execute(f'ALTER SEQUENCE {table}_id_seq AS {sequence}')


def upgrade() -> None:
    _retype(sa.Integer(), sa.BigInteger(), 'bigint')


def downgrade() -> None:
    _retype(sa.BigInteger(), sa.Integer(), 'integer')
