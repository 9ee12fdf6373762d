"""Loading: a config directory → the desired state.

``loader`` runs ``main.py`` against the config language and turns what it
declared into resources; ``code_identity`` hashes each backend's code (and the
local modules it imports) so a code edit shows as a replace; ``attributes``
turns declarations into the plain attributes the planner diffs;
``composition`` reads which backends call which through handles; ``bundle``
decides what code ships (``.servectlignore``) and digests it.
"""
