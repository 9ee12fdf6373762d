"""The node agent: what runs on every AWS node (``python3.11 -m servectl.node_agent``).

It keeps the node's front proxy in line with the routing document the apply
wrote, and on the head it sizes the node groups from Serve's replica demand
(``scaler``). It imports from providers and the planning stage, never from
the CLI or the engine.
"""
