"""Usage and cost accounting: exact money, the usage ledger, client rules (allowed models,
rpm/tpm, budgets), and the admin view of usage. The ledger lives in a state store."""

from truckllm.accounting.money import cost_nanos, format_usd, rates_of, usd_to_nanos
from truckllm.accounting.service import Accounting, settle_usage
from truckllm.accounting.view import usage_view

__all__ = [
    "Accounting",
    "cost_nanos",
    "format_usd",
    "rates_of",
    "settle_usage",
    "usage_view",
    "usd_to_nanos",
]
