"""Run as ``python -m container_netstat``."""

from container_netstat.cli import main

main()
