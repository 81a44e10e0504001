"""`python -m fade_cli ...` runs the `fade` command."""

from .cli import main

if __name__ == "__main__":
    main()
