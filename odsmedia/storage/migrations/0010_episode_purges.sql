-- Episode media to remove from the store. Every way an episode row goes (the
-- replay API, the CLI, a room deleted with its episodes by cascade, retention)
-- queues its storage key here in the same transaction, so the objects are
-- removed even when the deleting node holds no files or the bucket is down
-- at that moment; any node's purge loop empties the queue.

CREATE TABLE episode_purges (
    storage_key     text PRIMARY KEY,
    queued_at       timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION episodes_queue_purge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO episode_purges (storage_key) VALUES (OLD.storage_key) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER episodes_queue_purge AFTER DELETE ON episodes
    FOR EACH ROW EXECUTE FUNCTION episodes_queue_purge();
