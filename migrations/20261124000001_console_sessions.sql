-- Operator console sessions (issue 11).
--
-- Signing in to the console exchanges an operator's API token for a session. The browser holds
-- only a random session id in an HttpOnly cookie; this table holds the SHA-256 of that id (a
-- leaked table does not let anyone act), the API token the session stands for (so its scopes,
-- revocation and expiry apply on every request), the CSRF token the session's forms carry, and
-- when the session ends. The API token itself is never stored in any form here.

CREATE TABLE console_sessions (
    id_hash    bytea       PRIMARY KEY,
    token_id   uuid        NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    csrf_token text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
CREATE INDEX console_sessions_token ON console_sessions (token_id);
