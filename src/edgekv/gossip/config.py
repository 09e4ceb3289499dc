"""Tunable intervals and sizes of the gossip protocol, with the defaults the benchmarks use.

Every field is in seconds (floats) or counts/bytes (ints).  The defaults were tuned with
`benchmarks/bench_gossip.py` (25 edges + origin, 100 ms links, 100 writes/s): see
benchmarks/results/gossip.md for what they give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidInput


@dataclass
class GossipConfig:
    """Gossip timers and limits.  All times are seconds of the caller's clock (`now`)."""

    # -- dissemination (Plumtree) -----------------------------------------------------------
    push_window: float = 0.15
    """The origin's longest batching window: at most one PUSH per eager peer per window, so under
    load one PUSH carries many writes (a write after a quiet spell leaves at once; the window
    while no round trip is known)."""
    relay_window: float = 0.002
    """A relay's batching window before forwarding what a PUSH brought (much smaller)."""
    push_rtt_factor: float = 1.0
    """The window toward a peer is this many of its link's round trips (the driver's measure,
    over TCP the kernel's lowest for the connection; else the lowest SWIM probe), capped by
    push_window / relay_window: on a fast link a window of 150 ms would cost its whole
    length, on a slow one batching is what keeps messages per write low.  0: fixed windows.
    Under load a lost push is repaired by the next one, a window later, so the window is also
    the cost of a loss (1,000 edges, 50 ms links: 2 round trips gave p99 650 ms, 1 gave 480)."""
    push_min_window: float = 0.005
    """The floor of the origin's window toward any peer, however fast the link: under load it
    pushes to a peer at most once per this, so at 1,000 writes/s each edge gets a push every
    few ms carrying every write since (one certificate, one receive), not one per commit
    group (on loopback round trips of tens of microseconds made every group its own push to
    every edge: 11 edges cost the origin ~8x its CPU per write, and saturated the edges' CPU).
    A write after a quiet spell this long still leaves at once, so it costs latency only
    under load, at most this much.  0: the window follows the link alone."""
    push_again: int = 2
    """A PUSH repeats this many previous pushes to the same peer (when they are small, see
    push_again_bytes), so a lost push (two in a row, by default) is repaired by the next one,
    about one window later, at no extra message.  0: never."""
    push_again_bytes: int = 16 << 10
    """The repeated pushes travel only while their deltas total at most this many bytes."""
    fanout: int = 6
    """Initial eager peers of an edge; the tree forms by pruning duplicates from this set."""
    origin_fanout: int = 32
    """Eager peers of the origin, the source of every seq.  A wide root: a direct push costs
    the origin one send, while a relay hop costs an edge a wake-up, a relay, the duplicates
    that prune the tree and, under loss, a second chance to lose the write (a write lost on
    two hops waits two repair windows).  Up to this many edges get each write in one hop; the
    rest through a tree of depth about log_fanout(edges / origin_fanout)."""
    max_hops: int = 0
    """Retransmit limit of a PUSH in hops; 0 means automatic: 2 * ceil(log2(members + 1)) + 2."""
    ihave_window: float = 1.0
    """Lazy notices (IHAVE) are rate-limited to one per this window (they batch meanwhile)."""
    ihave_delay: float = 0.02
    """After a quiet spell the first notice goes out this soon (fast loss detection)."""
    ihave_peers: int = 1
    """At most this many lazy peers get an IHAVE per window (rotated), to bound notice traffic."""
    graft_timeout: float = 0.1
    """How long a node that learned of seqs it lacks waits for them before sending GRAFT."""
    graft_peers: int = 2
    """A GRAFT goes to this many holders at once (duplicate answers are harmless joins)."""
    graft_retry: float = 0.5
    """A GRAFT not answered within this (lost, or its answer lost) is retried with another peer;
    the longest wait: with measured round trips the wait is retry_rtt_factor of them."""
    retry_rtt_factor: float = 2.5
    """A GRAFT is retried after this many round trips of the slowest holder asked (at most
    graft_retry): a lost graft or answer costs a few round trips, not a fixed timer.  0: fixed."""

    # -- membership (SWIM) ------------------------------------------------------------------
    ping_interval: float = 1.0
    """One probe of one peer (round-robin over a shuffled list) per interval."""
    ping_timeout: float = 0.4
    """A direct ping not acknowledged within this leads to indirect probes (PING_REQ)."""
    indirect_probes: int = 3
    """Peers asked to probe a silent target before it is suspected."""
    suspect_timeout: float = 4.0
    """A suspect not refuted within this is declared dead."""
    members_interval: float = 10.0
    """Full member list gossip to one random peer every interval (changes also piggyback)."""
    dead_forget: float = 3600.0
    """Dead peers are kept (for revival and tie-breaking) this long, then forgotten; seeds and the
    origin never are (they are re-pinged until they answer)."""

    # -- catch-up and anti-entropy ------------------------------------------------------------
    ae_interval: float = 2.0
    """One anti-entropy session with a random live peer per interval."""
    ae_timeout: float = 2.0
    """A session (either side) silent this long is dropped (every message restarts the clock),
    so one lost message costs at most this much before a new session starts."""
    ae_force_every: int = 10
    """A periodic session whose peers differ only by writes in flight stops after the root
    exchange (catch-up delivers those); every ae_force_every-th session descends anyway."""
    sync_timeout: float = 3.0
    """A SYNC_REQ unanswered this long is retried with another peer."""
    purge_interval: float = 10.0
    """Tombstone purge by causal stability runs this often."""

    # -- bootstrap by snapshot (gossip/snapshot.py) ------------------------------------------------
    snapshot_from_keys: int = 2_000
    """A catch-up request more than this many changed keys behind is answered with a snapshot
    offer instead (the switch point, measured: benchmarks/results/bootstrap.md)."""
    snapshot_whole_from: float = 0.5
    """A restarting node whose delta (the keys changed since its file's watermark) is at least
    this share of the responder's keys, and whose snapshot source is a caught-up edge, drops
    its file and takes the whole store from that edge (gossip/snapshot.py rule 12; the origin
    always serves the delta; above 1: never).  Measured at 1M keys with half of them changed:
    file and delta took 5.1-8.9 s (medians 5.67, 7.26 s) from spawn to the watermark, a whole store
    about 4.2 s, for twice the bytes (benchmarks/results/bootstrap.md)."""
    snapshot_chunk_bytes: int = 64 << 10
    """Target payload of one snapshot chunk.  The responder builds one chunk per event, so
    this bounds what a write arriving meanwhile waits for: measured at an origin serving a
    fresh edge 1M keys under its full write load (bench_bootstrap, five runs each), 256 KiB
    chunks gave its puts 42-47% of their idle rate with a p99 of 16-20 ms, 64 KiB chunks 56%
    [53-64%] and 8.5 ms, for a fresh edge serving after 3.85 s instead of 2.9-3.5 s."""
    snapshot_window: int = 8
    """Snapshot chunks a receiver lets be in flight at once (its credit, at most 16).  The
    bytes in flight, `snapshot_window * snapshot_chunk_bytes` (512 KiB), bound a transfer
    over a long link at that much per round trip (about 10 MiB/s at 50 ms): raise it for
    links that slow.  16 at 64 KiB took the origin's puts back to 47% [46-56%] of idle in
    the same benchmark (the responder is then never short of credit)."""
    snapshot_timeout: float = 10.0
    """A snapshot source silent this long is abandoned: the transfer resumes from its cursor
    with another peer."""
    snapshot_lag: int = 20_000
    """A peer whose watermark is within this many seqs of the offer's counts as caught up (a
    snapshot source); edges are preferred to the origin.  Generous: a source that far behind
    leaves a gap a catch-up or a small delta fills, while a source not counted leaves the
    origin to serve the whole store (with 1,000, at 1,000+ writes/s an edge known by its
    last ping, or one slowed by serving nine snapshots, was not caught up, and one of ten
    joining edges took its 1M keys from the origin)."""

    # -- sizes ----------------------------------------------------------------------------------
    max_message_bytes: int = 1 << 20
    """Soft limit of one outgoing message's payload (SYNC_DATA and AE replies are chunked)."""
    max_members: int = 10_000
    """Hard limit on the member table (rows for unknown peers beyond it are ignored)."""

    def __post_init__(self) -> None:
        for name in (
            "push_window",
            "relay_window",
            "push_rtt_factor",
            "push_min_window",
            "ihave_window",
            "ihave_delay",
            "graft_timeout",
            "graft_retry",
            "retry_rtt_factor",
            "ping_timeout",
            "suspect_timeout",
            "sync_timeout",
            "dead_forget",
            "snapshot_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidInput(f"GossipConfig.{name} must be a finite number >= 0")
        for name in (
            "ping_interval",
            "ae_interval",
            "ae_timeout",
            "purge_interval",
            "members_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise InvalidInput(f"GossipConfig.{name} must be a finite number > 0")
        for name, least in (
            ("fanout", 1),
            ("origin_fanout", 1),
            ("ihave_peers", 1),
            ("ae_force_every", 1),
            ("graft_peers", 1),
            ("snapshot_from_keys", 1),
            ("snapshot_window", 1),
            ("indirect_probes", 0),
            ("max_hops", 0),
            ("push_again", 0),
            ("push_again_bytes", 0),
            ("snapshot_lag", 0),
            ("snapshot_chunk_bytes", 1024),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise InvalidInput(f"GossipConfig.{name} must be an integer >= {least}")
        whole = self.snapshot_whole_from
        if not isinstance(whole, int | float) or not math.isfinite(whole) or whole <= 0:
            raise InvalidInput("GossipConfig.snapshot_whole_from must be a finite number > 0")
        if self.max_message_bytes < 4096:
            raise InvalidInput("GossipConfig.max_message_bytes must be at least 4096")

    def hop_limit(self, members: int) -> int:
        """The retransmit limit for a cluster of `members` nodes (about 2 log2 N)."""
        if self.max_hops:
            return self.max_hops
        return 2 * math.ceil(math.log2(members + 1)) + 2
