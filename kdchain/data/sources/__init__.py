"""Data sources, one module per `kind`: its spec (a kdchain.spec.data.Source decorated with
kdchain.spec.kinds.SOURCES.register) and its loader as the spec's methods."""
