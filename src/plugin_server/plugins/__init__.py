"""Plugins: loading from the database, the runtimes (Python, JavaScript), the meta API, running them."""
