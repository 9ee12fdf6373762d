"""Routing: the traffic math and policies shared by replicas, node agents and providers.

``traffic`` maps weights and shard keys onto backends (the same allocation
everywhere a request can be routed: front proxy, handles, node agents);
``policy`` reads an endpoint's routing document as replicas cache it. Pure
code over plain data: it imports nothing above the foundation modules.
"""
