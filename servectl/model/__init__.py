"""The data model: the desired state a loaded config asks for and the plan that reaches it, as plain data.

``desired`` holds the resources by address (``backend.NAME``,
``endpoint.NAME``, and the kinds a provider registers), ``plan`` the typed
changes (Terraform's actions: create, update, replace, delete), ``capacity``
the node and placement records both share, and ``kinds`` the registry of
resource kinds with what changing each attribute costs. Everything here is
JSON-serialisable and does no I/O.
"""
