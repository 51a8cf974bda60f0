"""The API's routers: thin, each handler one call into the broker's services."""
