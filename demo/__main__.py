"""`python -m demo` starts the demo."""

from demo.app import main

main()
