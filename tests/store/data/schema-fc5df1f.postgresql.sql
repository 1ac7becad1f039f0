-- The schema peerage created at commit fc5df1f (the last release before migrations), postgresql.
-- Generated from that commit's metadata with SQLAlchemy's create_all; do not edit.
CREATE TABLE accounts (
	address VARCHAR(320) NOT NULL, 
	domain VARCHAR(253) NOT NULL, 
	local VARCHAR(64) NOT NULL, 
	scram_salt BYTEA NOT NULL, 
	scram_iterations INTEGER NOT NULL, 
	scram_sha1_stored_key BYTEA NOT NULL, 
	scram_sha1_server_key BYTEA NOT NULL, 
	scram_sha256_stored_key BYTEA NOT NULL, 
	scram_sha256_server_key BYTEA NOT NULL, 
	sip_ha1_md5 VARCHAR(32) NOT NULL, 
	sip_ha1_sha256 VARCHAR(64) NOT NULL, 
	argon2 VARCHAR(255) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
	CONSTRAINT pk_accounts PRIMARY KEY (address)
);

CREATE INDEX ix_accounts_domain ON accounts (domain);

CREATE TABLE server_secrets (
	name VARCHAR(128) NOT NULL, 
	value BYTEA NOT NULL, 
	CONSTRAINT pk_server_secrets PRIMARY KEY (name)
);

CREATE TABLE schema_version (
	id SERIAL NOT NULL, 
	version INTEGER NOT NULL, 
	CONSTRAINT pk_schema_version PRIMARY KEY (id)
);

CREATE TABLE xmpp_roster (
	owner VARCHAR(2047) NOT NULL, 
	contact VARCHAR(2047) NOT NULL, 
	name VARCHAR(1024), 
	subscription VARCHAR(8) NOT NULL, 
	ask BOOLEAN NOT NULL, 
	approved BOOLEAN NOT NULL, 
	groups TEXT NOT NULL, 
	hidden BOOLEAN NOT NULL, 
	pending_in BOOLEAN NOT NULL, 
	pending_stanza TEXT, 
	CONSTRAINT pk_xmpp_roster PRIMARY KEY (owner, contact)
);

CREATE TABLE xmpp_roster_version (
	owner VARCHAR(2047) NOT NULL, 
	version INTEGER NOT NULL, 
	CONSTRAINT pk_xmpp_roster_version PRIMARY KEY (owner)
);

CREATE TABLE xmpp_offline (
	id SERIAL NOT NULL, 
	owner VARCHAR(2047) NOT NULL, 
	stamp FLOAT NOT NULL, 
	stanza TEXT NOT NULL, 
	CONSTRAINT pk_xmpp_offline PRIMARY KEY (id)
);

CREATE INDEX ix_xmpp_offline_owner_id ON xmpp_offline (owner, id);

CREATE TABLE xmpp_archive (
	id SERIAL NOT NULL, 
	owner VARCHAR(2047) NOT NULL, 
	archive_id VARCHAR(64) NOT NULL, 
	with_jid VARCHAR(2047) NOT NULL, 
	stamp FLOAT NOT NULL, 
	stanza TEXT NOT NULL, 
	CONSTRAINT pk_xmpp_archive PRIMARY KEY (id), 
	CONSTRAINT uq_xmpp_archive_archive_id UNIQUE (archive_id)
);

CREATE INDEX ix_xmpp_archive_owner_id ON xmpp_archive (owner, id);

CREATE INDEX ix_xmpp_archive_owner_with ON xmpp_archive (owner, with_jid);

CREATE TABLE xmpp_private (
	owner VARCHAR(2047) NOT NULL, 
	namespace VARCHAR(1024) NOT NULL, 
	xml TEXT NOT NULL, 
	CONSTRAINT pk_xmpp_private PRIMARY KEY (owner, namespace)
);

CREATE TABLE xmpp_vcard (
	owner VARCHAR(2047) NOT NULL, 
	xml TEXT NOT NULL, 
	CONSTRAINT pk_xmpp_vcard PRIMARY KEY (owner)
);

CREATE TABLE xmpp_blocklist (
	owner VARCHAR(2047) NOT NULL, 
	jid VARCHAR(3071) NOT NULL, 
	CONSTRAINT pk_xmpp_blocklist PRIMARY KEY (owner, jid)
);

CREATE TABLE sip_registrations (
	aor VARCHAR(1024) NOT NULL, 
	contact VARCHAR(1024) NOT NULL, 
	expires_at FLOAT NOT NULL, 
	q FLOAT NOT NULL, 
	call_id VARCHAR(255) NOT NULL, 
	cseq INTEGER NOT NULL, 
	path TEXT NOT NULL, 
	received VARCHAR(255) NOT NULL, 
	CONSTRAINT pk_sip_registrations PRIMARY KEY (aor, contact)
);

CREATE TABLE mail_mailboxes (
	id SERIAL NOT NULL, 
	owner VARCHAR(320) NOT NULL, 
	name VARCHAR(1024) NOT NULL, 
	uidvalidity BIGINT NOT NULL, 
	uidnext BIGINT NOT NULL, 
	highestmodseq BIGINT NOT NULL, 
	special_use VARCHAR(32), 
	subscribed BOOLEAN NOT NULL, 
	CONSTRAINT pk_mail_mailboxes PRIMARY KEY (id), 
	CONSTRAINT uq_mail_mailboxes_owner_name UNIQUE (owner, name)
);

CREATE TABLE mail_uidvalidity (
	owner VARCHAR(320) NOT NULL, 
	last BIGINT NOT NULL, 
	CONSTRAINT pk_mail_uidvalidity PRIMARY KEY (owner)
);

CREATE TABLE mail_bodies (
	name VARCHAR(64) NOT NULL, 
	body BYTEA NOT NULL, 
	CONSTRAINT pk_mail_bodies PRIMARY KEY (name)
);

CREATE TABLE mail_queue (
	id SERIAL NOT NULL, 
	message_file VARCHAR(64) NOT NULL, 
	mail_from VARCHAR(320) NOT NULL, 
	recipient VARCHAR(320) NOT NULL, 
	recipient_domain VARCHAR(255) NOT NULL, 
	size BIGINT NOT NULL, 
	smtputf8 BOOLEAN NOT NULL, 
	queued_at BIGINT NOT NULL, 
	next_attempt_at BIGINT NOT NULL, 
	attempts INTEGER NOT NULL, 
	last_error TEXT NOT NULL, 
	delay_notice_sent BOOLEAN NOT NULL, 
	CONSTRAINT pk_mail_queue PRIMARY KEY (id)
);

CREATE INDEX ix_mail_queue_message_file ON mail_queue (message_file);

CREATE INDEX ix_mail_queue_next_attempt ON mail_queue (next_attempt_at);

CREATE TABLE mail_messages (
	id SERIAL NOT NULL, 
	mailbox_id INTEGER NOT NULL, 
	uid BIGINT NOT NULL, 
	modseq BIGINT NOT NULL, 
	flags TEXT NOT NULL, 
	internal_date BIGINT NOT NULL, 
	internal_zone INTEGER NOT NULL, 
	size BIGINT NOT NULL, 
	blob VARCHAR(64) NOT NULL, 
	header BYTEA NOT NULL, 
	plain BOOLEAN NOT NULL, 
	structure BYTEA, 
	basic_structure BYTEA, 
	CONSTRAINT pk_mail_messages PRIMARY KEY (id), 
	CONSTRAINT uq_mail_messages_mailbox_uid UNIQUE (mailbox_id, uid), 
	CONSTRAINT fk_mail_messages_mailbox_id_mail_mailboxes FOREIGN KEY(mailbox_id) REFERENCES mail_mailboxes (id) ON DELETE CASCADE
);

CREATE INDEX ix_mail_messages_mailbox_modseq ON mail_messages (mailbox_id, modseq);

CREATE TABLE mail_expunged (
	id SERIAL NOT NULL, 
	mailbox_id INTEGER NOT NULL, 
	uid BIGINT NOT NULL, 
	modseq BIGINT NOT NULL, 
	CONSTRAINT pk_mail_expunged PRIMARY KEY (id), 
	CONSTRAINT fk_mail_expunged_mailbox_id_mail_mailboxes FOREIGN KEY(mailbox_id) REFERENCES mail_mailboxes (id) ON DELETE CASCADE
);

CREATE INDEX ix_mail_expunged_mailbox_modseq ON mail_expunged (mailbox_id, modseq);

INSERT INTO schema_version (id, version) VALUES (1, 1);
