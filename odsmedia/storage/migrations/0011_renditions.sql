-- Every video source of a session is its own rendition (own init sections,
-- segments and media playlist).  Rendition '' is the episode's first writer:
-- its files keep the unprefixed names and index.m3u8, so episodes recorded
-- before renditions existed (all rows '') read exactly as before.  Other
-- renditions prefix their file names with "<rendition>." (screen.00001-0.m4s).

ALTER TABLE segments ADD COLUMN rendition text NOT NULL DEFAULT '';
ALTER TABLE segments DROP CONSTRAINT segments_pkey;
ALTER TABLE segments ADD PRIMARY KEY (episode_id, rendition, seq);

-- What each rendition carries, for the episode API and the multivariant playlist.
CREATE TABLE episode_renditions (
    episode_id      bigint NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
    rendition       text NOT NULL,                -- '' = index.m3u8, else the file prefix
    label           text NOT NULL,                -- screen, camera, camera-2, ...: what a player shows
    source          text NOT NULL,                -- the publication's source (camera, screen)
    video_codec     text NOT NULL DEFAULT '',     -- RFC 6381 (avc1.42e01f); '' while unknown
    audio_codec     text NOT NULL DEFAULT '',     -- opus | mp4a.40.2 | '' (no audio)
    width           integer NOT NULL DEFAULT 0,
    height          integer NOT NULL DEFAULT 0,
    PRIMARY KEY (episode_id, rendition)
);
