-- The room role an item's author held when posting (host, moderator, viewer):
-- the badge pages show next to the name, kept with the item so replay and
-- history show it after the author has left or changed role.
ALTER TABLE chat_items ADD COLUMN author_role text NOT NULL DEFAULT 'viewer'
    CHECK (author_role IN ('host', 'moderator', 'viewer'));
