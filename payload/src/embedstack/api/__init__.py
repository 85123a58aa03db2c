"""The HTTP layer: request schemas, the error table, routes."""
