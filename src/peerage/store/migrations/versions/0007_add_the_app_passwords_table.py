"""Add the app passwords table (peerage.identity.tables).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('app_passwords',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('scram_sha1_stored_key', sa.LargeBinary(), nullable=False),
    sa.Column('scram_sha1_server_key', sa.LargeBinary(), nullable=False),
    sa.Column('scram_sha256_stored_key', sa.LargeBinary(), nullable=False),
    sa.Column('scram_sha256_server_key', sa.LargeBinary(), nullable=False),
    sa.Column('sip_ha1_md5', sa.String(length=32), nullable=False),
    sa.Column('sip_ha1_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_app_passwords')),
    sa.UniqueConstraint('account', 'name', name='uq_app_passwords_account_name')
    )
    with op.batch_alter_table('app_passwords', schema=None) as batch_op:
        batch_op.create_index('ix_app_passwords_token', ['token_sha256'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('app_passwords', schema=None) as batch_op:
        batch_op.drop_index('ix_app_passwords_token')

    op.drop_table('app_passwords')
