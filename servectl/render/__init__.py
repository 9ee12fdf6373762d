"""Views: plans, drift, events, status and rollouts rendered for people (rich) — they read data and decide nothing.

``plan`` renders plans and drift in Terraform's shape, ``events`` the engine's
events as progress lines, ``status`` and ``rollout`` their reports. The JSON
views live with the data they print (``to_dict``) or in ``events.json_line``.
"""
