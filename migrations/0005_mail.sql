-- Mail (users spec §4): an outbox written in the same transaction as the record a mail belongs
-- to, drained by a sender in every instance; confirmation and reset codes kept only as hashes.

-- Every mail to send, and what became of it. A sender claims due rows with FOR UPDATE SKIP
-- LOCKED and leases them (next_attempt moves past the send's deadline), so instances share the
-- queue and a mail claimed by an instance that died is sent by another once the lease runs out.
CREATE TABLE mail_outbox (
    id            bigserial   PRIMARY KEY,
    created       timestamptz NOT NULL DEFAULT now(),
    -- 'confirmation', 'password_reset' or 'email' (core.email): what a final failure undoes.
    purpose       text        NOT NULL,
    -- The user a confirmation or reset mail is for; their unsent mail goes with them.
    user_id       uuid        REFERENCES users (user_id) ON DELETE CASCADE,
    -- {from, to[], cc[], bcc[], reply_to, subject, text, html, tag}
    message       jsonb       NOT NULL,
    state         text        NOT NULL DEFAULT 'queued'
                              CHECK (state IN ('queued', 'sent', 'failed')),
    attempts      integer     NOT NULL DEFAULT 0,
    next_attempt  timestamptz NOT NULL DEFAULT now(),
    last_error    text,
    finished      timestamptz
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt) WHERE state = 'queued';
CREATE INDEX mail_outbox_user_idx ON mail_outbox (user_id) WHERE user_id IS NOT NULL;

-- Confirmation codes become SHA-256 hashes (hex) of the code in the link; codes already mailed
-- keep working.
UPDATE users SET confirmation_code = encode(sha256(convert_to(confirmation_code, 'UTF8')), 'hex')
WHERE confirmation_code IS NOT NULL;
-- What resendConfirmation reuses (from_email, subject, template, tpl_keys), and when it last
-- queued a mail (at most one resend a minute).
ALTER TABLE users ADD COLUMN confirmation_options jsonb,
                  ADD COLUMN confirmation_resent timestamptz;

-- Password resets (users spec §4): a code's hash, valid for 24 hours, one user's newest only.
CREATE TABLE password_resets (
    code_hash  text        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    scope      text        NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_resets_user_idx ON password_resets (user_id);
CREATE INDEX password_resets_created_idx ON password_resets (created);
