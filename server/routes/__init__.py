"""HTTP route modules. Each builds its :class:`server.api.Endpoint` list from explicit
dependencies; server/app.py assembles them."""

__all__: list[str] = []
