-- Tokens may expire: a token past expires_at is refused like a revoked one
-- (NULL: it does not expire). Set once, when the token is created.
ALTER TABLE auth_tokens ADD COLUMN expires_at timestamptz;
