"""Identity: API tokens, magic-link accounts, sessions, anonymous viewers."""
