"""One ComponentResource per concern; __main__.py wires them together."""

from components.bundle import BundleStore
from components.embedding_tier import EmbeddingTier
from components.index_tier import IndexTier
from components.network import Network
from components.service_accounts import ServiceAccounts

__all__ = ["BundleStore", "EmbeddingTier", "IndexTier", "Network", "ServiceAccounts"]
