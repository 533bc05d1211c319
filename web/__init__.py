"""Pages: aiohttp-jinja2 templates and plain ES-module JavaScript."""
