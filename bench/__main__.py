"""`python -m bench` runs the benchmark and writes bench/results.json and bench/results.md."""

from bench.run import main

main()
