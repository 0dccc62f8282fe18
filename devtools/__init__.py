"""Development helpers shared by tests and benchmarks: stand-in models and a test server; never imported by the core."""
