"""`python -m envforge` runs the command-line interface."""

from envforge.cli import main

if __name__ == "__main__":
    main()
