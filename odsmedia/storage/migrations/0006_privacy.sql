-- Request logs keep a region, never an address (privacy policy, "Usage").
CREATE TABLE request_logs (
    at              timestamptz NOT NULL,
    method          text NOT NULL,
    route           text NOT NULL,
    status          smallint NOT NULL,
    duration_ms     real NOT NULL,
    region          text NOT NULL,
    subject         text            -- gate.Identity.subject when the request was admitted
);
CREATE INDEX request_logs_at ON request_logs (at);

-- Aggregates kept after the raw rows rotate out.
CREATE TABLE analytics_daily (
    day             date NOT NULL,
    route           text NOT NULL,
    region          text NOT NULL,
    requests        bigint NOT NULL,
    errors          bigint NOT NULL,
    PRIMARY KEY (day, route, region)
);
