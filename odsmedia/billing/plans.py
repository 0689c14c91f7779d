"""The plan catalog from configuration: ``[plans.CODE] price = "price_..." label = "..."``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ..config import Config

_CODE = re.compile(r"^[a-z0-9_-]{1,40}$")   # same shape rooms accept in plan:CODE


@dataclass(frozen=True)
class Plan:
    code: str
    price: str
    label: str
    description: str = ""
    # Enterprise plans are bought for an organization; quantity = seats.
    seats: bool = False

    def public(self) -> dict:
        return {"code": self.code, "label": self.label, "description": self.description, "seats": self.seats}


@dataclass(frozen=True)
class Catalog:
    plans: Mapping[str, Plan]
    by_price: Mapping[str, Plan]

    def get(self, code: object) -> Plan | None:
        return self.plans.get(code) if isinstance(code, str) else None


def catalog(config: Config) -> Catalog:
    plans: dict[str, Plan] = {}
    for code, raw in config.plans.items():
        if not _CODE.match(code):
            raise ValueError(f"plan code {code!r}: 1-40 of a-z, 0-9, '_' and '-'")
        plans[code] = Plan(
            code=code,
            price=str(raw["price"]),
            label=str(raw.get("label", code)),
            description=str(raw.get("description", "")),
            seats=bool(raw.get("seats", False)),
        )
    return Catalog(plans, {p.price: p for p in plans.values()})
