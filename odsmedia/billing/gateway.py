"""Stripe API calls, asynchronous, through the stripe library's aiohttp client.

``stripe.StripeClient`` with ``http_client=stripe.AIOHTTPClient()`` and the
``*_async`` methods never block the event loop.  ``billing.stripe_api_base``
points the library somewhere else (tests: a local stand-in).
"""

from __future__ import annotations

import stripe

from ..config import Config
from ..errors import ApiError


class StripeGateway:
    def __init__(self, config: Config) -> None:
        self.configured = bool(config["billing.stripe_secret_key"])
        self.webhook_secret = config["billing.stripe_webhook_secret"]
        self.http = stripe.AIOHTTPClient(timeout=20)
        base = config["billing.stripe_api_base"]
        self.client = stripe.StripeClient(
            config["billing.stripe_secret_key"] or "sk_unset",
            base_addresses={"api": base.rstrip("/")} if base else None,
            http_client=self.http,
            max_network_retries=2,
        )

    def _require(self) -> None:
        if not self.configured:
            raise ApiError(503, "billing_unavailable", "billing is not configured on this server")

    async def create_customer(self, email: str, metadata: dict[str, str]) -> str:
        self._require()
        try:
            customer = await self.client.v1.customers.create_async(params={"email": email, "metadata": metadata})
        except stripe.StripeError as exc:
            raise ApiError(502, "stripe_error", f"Stripe refused: {exc.user_message or type(exc).__name__}") from None
        return customer.id

    async def checkout(self, *, customer: str, price: str, quantity: int, success_url: str, cancel_url: str,
                       reference: str, metadata: dict[str, str]) -> str:
        self._require()
        try:
            session = await self.client.v1.checkout.sessions.create_async(params={
                "mode": "subscription",
                "customer": customer,
                "line_items": [{"price": price, "quantity": quantity}],
                "success_url": success_url,
                "cancel_url": cancel_url,
                "client_reference_id": reference,
                "metadata": metadata,
                "subscription_data": {"metadata": metadata},
            })
        except stripe.StripeError as exc:
            raise ApiError(502, "stripe_error", f"Stripe refused: {exc.user_message or type(exc).__name__}") from None
        return session.url

    async def portal(self, *, customer: str, return_url: str) -> str:
        self._require()
        try:
            session = await self.client.v1.billing_portal.sessions.create_async(
                params={"customer": customer, "return_url": return_url})
        except stripe.StripeError as exc:
            raise ApiError(502, "stripe_error", f"Stripe refused: {exc.user_message or type(exc).__name__}") from None
        return session.url

    def verify(self, payload: bytes, signature: str | None) -> None:
        """Raises ApiError 400 unless Stripe signed this payload recently (default tolerance)."""
        if not self.webhook_secret:
            raise ApiError(503, "billing_unavailable", "STRIPE_WEBHOOK_SECRET is not set")
        if not signature:
            raise ApiError(400, "invalid_signature", "missing Stripe-Signature header")
        # Only the signature check is the library's; parsing is ours, so a signed body that is not an
        # event object gets a 400 rather than an exception inside stripe's event builder.
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode("utf-8"), signature, self.webhook_secret, tolerance=stripe.Webhook.DEFAULT_TOLERANCE)
        except (stripe.SignatureVerificationError, UnicodeDecodeError):
            raise ApiError(400, "invalid_signature", "Stripe-Signature does not verify (wrong, or too old)") from None

    async def close(self) -> None:
        await self.http.close_async()
