"""chatdock's Python client: `ChatdockClient(url, api_key)` over the REST API, `ChatdockClient.embedded(db=...)`
over a store in this process (docs/client.md)."""

from .client import Changed, ChatdockClient
from .errors import ChatdockApiError

__all__ = ["Changed", "ChatdockApiError", "ChatdockClient"]
