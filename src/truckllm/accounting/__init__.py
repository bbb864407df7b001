"""Usage and cost accounting: exact money, the usage ledger, client rules (allowed models,
rpm/tpm, budgets). The ledger is sent to a state store by :mod:`truckllm.coordination`."""

from truckllm.accounting.money import cost_nanos, format_usd, rates_of, usd_to_nanos
from truckllm.accounting.service import Accounting, settle_usage

__all__ = [
    "Accounting",
    "cost_nanos",
    "format_usd",
    "rates_of",
    "settle_usage",
    "usd_to_nanos",
]
