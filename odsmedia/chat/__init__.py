"""Chat: messages, questions and highlights per room, fanned out over Redis,
persisted in Postgres first, moderated in real time (see docs/protocol.md, "## Chat")."""
