"""Add the JMAP blob, settings and submission tables (peerage.mail.jmap.tables).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 11:25:10.669220
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jmap_blobs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account', sa.String(length=320), nullable=False),
    sa.Column('type', sa.String(length=255), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jmap_blobs'))
    )
    with op.batch_alter_table('jmap_blobs', schema=None) as batch_op:
        batch_op.create_index('ix_jmap_blobs_account', ['account'], unique=False)

    op.create_table('jmap_settings',
    sa.Column('account', sa.String(length=320), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('modseq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('account', 'kind', name=op.f('pk_jmap_settings'))
    )
    op.create_table('jmap_submissions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account', sa.String(length=320), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jmap_submissions'))
    )
    with op.batch_alter_table('jmap_submissions', schema=None) as batch_op:
        batch_op.create_index('ix_jmap_submissions_account', ['account'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('jmap_submissions', schema=None) as batch_op:
        batch_op.drop_index('ix_jmap_submissions_account')

    op.drop_table('jmap_submissions')
    op.drop_table('jmap_settings')
    with op.batch_alter_table('jmap_blobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jmap_blobs_account')

    op.drop_table('jmap_blobs')
