"""Database: async engine, models, schema migrations. Does not hold business rules."""
