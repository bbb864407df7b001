"""The admin API under ``/admin/v1``: key state and usage, enabling and disabling keys,
providers, stats, the redacted configuration, validation and reload.

Authorised by ``Authorization: Bearer <server.admin_api_key>``; with no admin key configured the
API is off (404). It sees the gateway through :class:`AdminContext` only: the stats, the reloader,
the usage ledger's query and the provider types; each request brings the runtime in force.
"""

from truckllm.admin.api import AdminAPI, AdminContext
from truckllm.admin.stats import KeyUsage, Stats

__all__ = ["AdminAPI", "AdminContext", "KeyUsage", "Stats"]
