"""Babel-style routing (RFC 8966 semantics over our own links), one module per concept.

- ``neighbours``: hello/IHU, link cost (ETX plus an RTT penalty), neighbour up/lost.
- ``wire``: the routing message on the wire and its strict decoder.
- ``source``: the source table and the feasibility condition (loop freedom).
- ``route``: route entries and the selected route.
- ``requests``: seqno requests and the per-neighbour output queue.
- ``table``: ``RoutingTable``, the core that ties them together
  (``receive``/``datagrams_to_send``/``get_timer``/``handle_timer``/``next_event``).

All of it is pure: no I/O, no clock reads (``now`` is passed in).
"""
