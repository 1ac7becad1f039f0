"""Web sessions (hashed cookie tokens) and RFC 6238 second factors, for the web service's one login.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:16:14.741564
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('web_sessions',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('account', sa.String(length=320), nullable=False),
    sa.Column('csrf', sa.String(length=64), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('expires', sa.Float(), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('user_agent', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_web_sessions')),
    sa.UniqueConstraint('public_id', name=op.f('uq_web_sessions_public_id'))
    )
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_web_sessions_account', ['account'], unique=False)

    op.create_table('web_totp',
    sa.Column('account', sa.String(length=320), nullable=False),
    sa.Column('secret', sa.String(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('last_step', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('account', name=op.f('pk_web_totp'))
    )


def downgrade() -> None:
    op.drop_table('web_totp')
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_web_sessions_account')

    op.drop_table('web_sessions')
