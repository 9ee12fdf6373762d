"""How the providers read Serve's applications back: no Ray needed."""
from __future__ import annotations

from servectl.providers.serve_apps import standing, strangers


def test_applications_being_deleted_are_no_strangers_to_an_apply():
    details = {"applications": {
        "mine": {"status": "RUNNING"},
        "hand_made": {"status": "RUNNING"},
        "deploying": {"status": "DEPLOYING"},
        "going": {"status": "DELETING"},  # another state's destroy, still stopping its replicas
    }}
    assert strangers(details, {"mine"}) == ["deploying", "hand_made"]
    assert standing(details) == ["deploying", "hand_made", "mine"]
    assert strangers({"applications": None}, set()) == []
