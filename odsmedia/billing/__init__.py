"""Billing: Stripe checkout/portal/webhooks, organizations and seats, entitlements."""
