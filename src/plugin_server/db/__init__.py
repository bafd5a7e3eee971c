"""Database access: Postgres pools, migrations, Redis clients."""
