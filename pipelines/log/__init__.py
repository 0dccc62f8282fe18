"""The log: the journal and its DuckDB file, schema and migrations, all SQL, seed, export and privacy."""
