"""Prefect flows, deployments and the `kdchain` command line over the kdchain library."""
