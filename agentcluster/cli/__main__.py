"""``python -m agentcluster.cli``: the same as the ``agentcluster`` console script."""

from agentcluster.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
