"""``python3.11 -m servectl.node_agent``: run the node agent (see ``servectl.node_agent.agent``)."""
import sys

from servectl.node_agent.agent import main

sys.exit(main())
