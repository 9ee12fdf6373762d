"""State documents and the stores that keep them (installed as ``servectl.state``)."""
from servectl.state.document import FORMAT_VERSION, ResourceState, StateDocument
from servectl.state.store import LockInfo, StateStore
from servectl.state.local import LocalStateStore

__all__ = ["FORMAT_VERSION", "ResourceState", "StateDocument", "LockInfo", "StateStore", "LocalStateStore"]
