"""Rooms: the directory of rooms (Postgres) and the live SFU state of each."""
