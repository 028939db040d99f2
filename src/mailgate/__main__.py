"""`python -m mailgate`."""

from mailgate.cli import main

# The guard matters: `serve --workers N` starts its processes with `spawn`,
# which imports this module again in every child.
if __name__ == "__main__":
    main()
