"""Per-platform behaviour of the simulated fleet: how long syncs take, which entities and webhooks exist.

Durations are realistic seconds (scaled later by `time_scale`): SHOPIFY onboards in minutes, NETSUITE in
hours.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

# Rutter's full `Platform` enum, 2024-08-31 (docs/rutter-api.md §5), for fleets "over ~30 platforms".
ALL_PLATFORMS: tuple[str, ...] = (
    "AMAZON", "EBAY", "ETSY", "FNAC", "WALMART", "SHOPEE", "LAZADA", "MERCADOLIBRE", "ALIBABA", "SHOPLINE",
    "PRESTASHOP", "SHOPIFY", "MAGENTO", "WOO_COMMERCE", "SQUARESPACE", "WIX", "SHOPER", "SHOPLAZZA",
    "BIG_COMMERCE", "SALLA", "ZID", "COMMERCELAYER", "WEBFLOW", "GUMROAD", "ECWID", "PAYPAL", "SQUARE",
    "STRIPE", "CLOVER", "MOLLIE", "PAYNL", "AUTHORIZENET", "RECHARGE", "CHARGIFY", "CHARGEBEE", "RECURLY",
    "KASHFLOW",
    "SAGE_INTACCT", "SAGE_INTACCT_V2", "DYNAMICS365", "ZOHOBOOKS", "EXACTONLINE", "FREEAGENT", "QUICKBOOKS",
    "QUICKBOOKS_DESKTOP", "FRESHBOOKS", "XERO", "SAGE_BUSINESS_CLOUD", "SAGE_50", "NETSUITE", "WAVE",
    "DUALENTRY", "MONEYBIRD", "SAGE200CLOUD", "MX", "PLAID", "TELLER", "ODOO", "TALLY", "GOOGLE", "FACEBOOK",
    "TIKTOK", "INTUIT_BANK_FEEDS", "SAGE", "SAGE_BANK_FEEDS", "QUICKBOOKS_HRIS", "BAMBOO_HR", "GUSTO",
)  # fmt: skip


class Category(StrEnum):
    COMMERCE = "commerce"
    ACCOUNTING = "accounting"
    PAYMENTS = "payments"
    OTHER = "other"


_ACCOUNTING = frozenset(
    {
        "KASHFLOW", "SAGE_INTACCT", "SAGE_INTACCT_V2", "DYNAMICS365", "ZOHOBOOKS", "EXACTONLINE", "FREEAGENT",
        "QUICKBOOKS", "QUICKBOOKS_DESKTOP", "FRESHBOOKS", "XERO", "SAGE_BUSINESS_CLOUD", "SAGE_50",
        "NETSUITE", "WAVE", "DUALENTRY", "MONEYBIRD", "SAGE200CLOUD", "ODOO", "TALLY", "SAGE",
    }
)  # fmt: skip
_PAYMENTS = frozenset(
    {
        "PAYPAL", "SQUARE", "STRIPE", "CLOVER", "MOLLIE", "PAYNL", "AUTHORIZENET", "RECHARGE", "CHARGIFY",
        "CHARGEBEE", "RECURLY",
    }
)  # fmt: skip
_OTHER = frozenset(
    {
        "MX", "PLAID", "TELLER", "GOOGLE", "FACEBOOK", "TIKTOK", "INTUIT_BANK_FEEDS", "SAGE_BANK_FEEDS",
        "QUICKBOOKS_HRIS", "BAMBOO_HR", "GUSTO",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Profile:
    """How one platform behaves: its category and the (min, max) realistic seconds of each sync phase."""

    category: Category
    initial_sync: tuple[float, float]
    batch: tuple[float, float]


_MIN = 60.0
_HOUR = 3600.0

_SPECIFIC: dict[str, Profile] = {
    "SHOPIFY": Profile(Category.COMMERCE, (2 * _MIN, 20 * _MIN), (10 * _MIN, _HOUR)),
    "AMAZON": Profile(Category.COMMERCE, (20 * _MIN, 3 * _HOUR), (30 * _MIN, 4 * _HOUR)),
    "NETSUITE": Profile(Category.ACCOUNTING, (2 * _HOUR, 12 * _HOUR), (2 * _HOUR, 12 * _HOUR)),
    "SAGE_INTACCT": Profile(Category.ACCOUNTING, (_HOUR, 6 * _HOUR), (_HOUR, 6 * _HOUR)),
    "QUICKBOOKS": Profile(Category.ACCOUNTING, (10 * _MIN, _HOUR), (30 * _MIN, 2 * _HOUR)),
    "XERO": Profile(Category.ACCOUNTING, (10 * _MIN, _HOUR), (30 * _MIN, 2 * _HOUR)),
}

_DEFAULTS: dict[Category, Profile] = {
    Category.COMMERCE: Profile(Category.COMMERCE, (10 * _MIN, 90 * _MIN), (30 * _MIN, 2 * _HOUR)),
    Category.ACCOUNTING: Profile(Category.ACCOUNTING, (30 * _MIN, 3 * _HOUR), (_HOUR, 4 * _HOUR)),
    Category.PAYMENTS: Profile(Category.PAYMENTS, (5 * _MIN, _HOUR), (15 * _MIN, _HOUR)),
    Category.OTHER: Profile(Category.OTHER, (10 * _MIN, _HOUR), (15 * _MIN, _HOUR)),
}


def category(platform: str) -> Category:
    """The family a platform belongs to; unknown platforms count as commerce (Rutter's historical core)."""
    if platform in _ACCOUNTING:
        return Category.ACCOUNTING
    if platform in _PAYMENTS:
        return Category.PAYMENTS
    if platform in _OTHER:
        return Category.OTHER
    return Category.COMMERCE


def profile(platform: str) -> Profile:
    """The timing profile of `platform`, specific where one is known, else its category's."""
    return _SPECIFIC.get(platform) or _DEFAULTS[category(platform)]


# Entities synced per category (uppercase, as Rutter names them in `platformEntity` and batch configs).
ENTITIES: dict[Category, tuple[str, ...]] = {
    Category.COMMERCE: ("ORDERS", "PRODUCTS", "CUSTOMERS"),
    Category.ACCOUNTING: ("EXPENSES", "INVOICES", "BILLS", "ACCOUNTS"),
    Category.PAYMENTS: ("TRANSACTIONS", "PAYOUTS", "CUSTOMERS"),
    Category.OTHER: ("TRANSACTIONS",),
}

# Entity webhook codes an ongoing connection of each category emits.
ENTITY_CODES: dict[Category, tuple[str, ...]] = {
    Category.COMMERCE: ("ORDER_CREATED", "ORDER_UPDATED", "PRODUCT_UPDATED", "CUSTOMER_CREATED"),
    Category.ACCOUNTING: (
        "EXPENSE_CREATED",
        "EXPENSE_UPDATED",
        "INVOICE_CREATED",
        "INVOICE_UPDATED",
        "BILL_CREATED",
        "ACCOUNT_UPDATED",
    ),
    Category.PAYMENTS: ("TRANSACTION_CREATED", "TRANSACTION_UPDATED", "PAYOUT_CREATED"),
    Category.OTHER: ("TRANSACTION_CREATED",),
}

# Which `synced_*_count` fields of `historical_sync_status` a category supports (the others are null).
SYNCED_COUNT_FIELDS: tuple[str, ...] = (
    "synced_balance_sheets_count",
    "synced_cash_flows_count",
    "synced_income_statements_count",
    "synced_orders_count",
    "synced_transactions_count",
)
SUPPORTED_COUNTS: dict[Category, frozenset[str]] = {
    Category.COMMERCE: frozenset({"synced_orders_count"}),
    Category.ACCOUNTING: frozenset(
        {
            "synced_balance_sheets_count",
            "synced_cash_flows_count",
            "synced_income_statements_count",
            "synced_transactions_count",
        }
    ),
    Category.PAYMENTS: frozenset({"synced_transactions_count"}),
    Category.OTHER: frozenset({"synced_transactions_count"}),
}

# Rutter's standardized reasons a simulated disable draws from (UNKNOWN stays rare: it says nothing).
DISABLE_REASONS: tuple[str, ...] = (
    "SHOP_API_KEY_EXPIRED",
    "SHOP_NOT_FOUND",
    "SHOP_IS_DISABLED_OR_EXPIRED",
    "SHOP_IS_LOCKED",
    "SHOP_PAYMENT_REQUIRED",
    "TUNNEL_ERROR",
    "SHOP_IS_UNAVAILABLE",
    "CERT_EXPIRED",
    "FAILED TO AUTHENTICATE",
    "REQUEST_TIMEOUT",
    "MANUALLY_DISABLED",
)

_ADJECTIVES = (
    "Acme", "Blue", "Bright", "Cedar", "Copper", "Golden", "Green", "Harbor", "Maple", "North", "Old", "Red",
    "Silver", "Stone", "Summit", "Sunny", "True", "Urban", "Wild", "Yellow",
)  # fmt: skip
_NOUNS = (
    "Anchor", "Bear", "Brook", "Crane", "Fern", "Fox", "Hill", "Lantern", "Leaf", "Oak", "Otter", "Pine",
    "River", "Sparrow", "Star", "Tide", "Valley", "Willow", "Wolf", "Wren",
)  # fmt: skip
_KINDS = (
    "Outfitters", "Goods", "Supply", "Studio", "Market", "Bakery", "Apparel", "Coffee", "Books", "Labs",
    "Tools", "Home", "Garden", "Pets", "Cycles", "Ceramics",
)  # fmt: skip


def store_name(rng: random.Random, number: int) -> str:
    """A readable, unique merchant name (the number keeps names unique, as Rutter requires of `name`)."""
    bits = rng.getrandbits(24)
    adjective = _ADJECTIVES[(bits & 0xFF) % len(_ADJECTIVES)]
    noun = _NOUNS[((bits >> 8) & 0xFF) % len(_NOUNS)]
    kind = _KINDS[(bits >> 16) % len(_KINDS)]
    return f"{adjective} {noun} {kind} {number}"


def slug(name: str) -> str:
    """The domain-safe form of a store name."""
    fast = "-".join(name.lower().split())
    if fast.replace("-", "").isalnum():
        return fast
    return "-".join(w for w in ("".join(ch for ch in part if ch.isalnum()) for part in name.lower().split()) if w)


def store_domain(platform: str, name: str) -> str:
    """Where the merchant's store or books live, in the platform's own style."""
    base = slug(name) or "store"
    if platform == "SHOPIFY":
        return f"{base}.myshopify.com"
    if category(platform) is Category.ACCOUNTING:
        return f"{base}.{platform.lower().replace('_', '')}.example"
    return f"{base}.example.com"
