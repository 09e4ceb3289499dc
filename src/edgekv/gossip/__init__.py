"""The gossip protocol, sans-IO: wire format, dissemination, catch-up, anti-entropy, membership.

Drivers (edgekv.node) feed `GossipNode` with inbound messages and the time, and send what it
returns; nothing in this package does I/O or reads a clock.
"""

from .config import GossipConfig
from .core import GossipNode
from .messages import Send, parse
from .peer import PeerInfo

__all__ = ["GossipConfig", "GossipNode", "PeerInfo", "Send", "parse"]
