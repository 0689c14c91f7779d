-- Billing: a mirror of what Stripe says (customers, subscriptions), enterprise
-- organizations and their seats, and the webhook events already applied.
-- No card data is ever stored: Stripe Checkout and the Customer Portal hold it.

CREATE TABLE organizations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 120),
    created_by      bigint REFERENCES accounts(id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Members are added by e-mail and need not have signed in yet; they are
-- entitled once an account with that address exists. Every member holds a seat.
CREATE TABLE org_members (
    org_id          bigint NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email           text NOT NULL CHECK (email = lower(email) AND position('@' in email) > 1),
    role            text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    added_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, email)
);
CREATE INDEX org_members_email ON org_members (email);

-- A Stripe customer belongs to one account (personal plan) or one organization.
CREATE TABLE billing_customers (
    customer_id     text PRIMARY KEY,
    account_id      bigint UNIQUE REFERENCES accounts(id) ON DELETE CASCADE,
    org_id          bigint UNIQUE REFERENCES organizations(id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((account_id IS NULL) <> (org_id IS NULL))
);

-- One row per Stripe subscription. The owner is found through the customer, so a
-- subscription event that arrives before its checkout is still kept.
CREATE TABLE subscriptions (
    subscription_id text PRIMARY KEY,
    customer_id     text NOT NULL,
    plan            text,                       -- our plan code (NULL: a price we do not sell)
    price_id        text NOT NULL DEFAULT '',
    status          text NOT NULL,              -- Stripe's status, verbatim
    quantity        integer NOT NULL DEFAULT 1 CHECK (quantity >= 0),
    current_period_end timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    past_due_since  timestamptz,
    -- Stripe's `created` of the newest event applied: an older event never overwrites.
    state_at        timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer ON subscriptions (customer_id);

-- Webhook idempotency: an event id is applied once.
CREATE TABLE stripe_events (
    event_id        text PRIMARY KEY,
    type            text NOT NULL,
    created         timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_received ON stripe_events (received_at);
