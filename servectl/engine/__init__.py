"""The engine: what does things, behind the state lock, reporting typed events.

``workspace`` binds a config directory to its state and provider (plan,
apply, destroy, rollback, drift, status); ``apply`` carries a plan out through
a provider change by change; ``rollout`` drives progressive delivery through
``analysis`` of the metrics ``status`` and ``prometheus`` read; ``drift``
compares what runs with what the state records; ``events`` are what the engine
reports instead of printing. Nothing here formats text for people.
"""
