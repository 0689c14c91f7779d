"""The billing feature object (``app[BILLING]``): plan catalog, Stripe gateway, entitlements."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..config import Config
from .entitlements import Entitlements
from .gateway import StripeGateway
from .plans import Catalog


@dataclass
class BillingService:
    config: Config
    catalog: Catalog
    gateway: StripeGateway
    entitlements: Entitlements | None = None   # set once the bus and pool exist


BILLING: web.AppKey[BillingService] = web.AppKey("billing", BillingService)
