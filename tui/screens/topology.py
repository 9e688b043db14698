"""Topology: the mesh as a graph, every link (redundant paths too) with its cost, and the path
the selected route takes drawn in bold.

The drawing is an arc diagram: nodes one a row, ordered by hops from this
node; each link is a vertical lane on the left joining its two nodes' rows,
with the link's cost written on the lane.  Lanes never share a row range, so
every link stays visible however meshed the network is.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, ScrollableContainer, Vertical
from textual.widgets import DataTable, Static

from tui.model import MeshModel, Route, Topology
from tui.screens.base import Column, View, fill_table, fmt_num, matches
from tui.text import clean

__all__ = ["TopologyView", "node_order", "render_graph", "route_path"]

#: the cost assumed for a link whose cost is unknown (one perfect hop, RFC 8966 A.2.1)
UNKNOWN_COST = 256.0
_PATH = "bold yellow"
#: (what is drawn, what is drawn over it) -> the junction
_MERGE = {("│", "─"): "┼", ("╭", "─"): "┬", ("╰", "─"): "┴", ("┼", "─"): "┼", ("┬", "─"): "┬",
          ("┴", "─"): "┴", ("─", "╭"): "┬", ("─", "╰"): "┴", ("┴", "╭"): "┼", ("┬", "╰"): "┼",
          ("┬", "╭"): "┬", ("┴", "╰"): "┴", ("─", "│"): "┼", ("┼", "╭"): "┼", ("┼", "╰"): "┼"}
_LINK = "cyan"


def node_order(topo: Topology, me: str | None) -> list[str]:
    """Node ids by hops from ``me`` (breadth first, names breaking ties), unreachable ones last."""
    adj = topo.adjacency()
    ids = sorted(adj, key=lambda x: (topo.name_of(x), x))
    order: list[str] = []
    seen: set[str] = set()
    for root in ([me] if me in adj else []) + ids:
        if root in seen:
            continue
        seen.add(root)
        q = deque([root])
        while q:
            x = q.popleft()
            order.append(x)
            for y, _ in adj.get(x, []):
                if y not in seen:
                    seen.add(y)
                    q.append(y)
    return order


def route_path(topo: Topology, me: str, route: Route) -> list[str]:
    """The nodes ``route`` crosses: this node, its next hop, then the cheapest links on to the
    destination (how the next hops choose, as far as this node can see); [] when unknown."""
    dest, hop = route.destination, route.next_hop
    if not route.reachable or not hop:
        return []
    if hop == dest:
        return [me, dest]
    adj = topo.adjacency()
    dist: dict[str, float] = {hop: 0.0}
    prev: dict[str, str] = {}
    heap = [(0.0, hop)]
    while heap:
        d, x = heapq.heappop(heap)
        if x == dest:
            break
        if d > dist.get(x, float("inf")):
            continue
        for y, cost in adj.get(x, []):
            if y == me:
                continue
            nd = d + (cost if cost is not None else UNKNOWN_COST)
            if nd < dist.get(y, float("inf")):
                dist[y] = nd
                prev[y] = x
                heapq.heappush(heap, (nd, y))
    if dest not in dist:
        return [me, hop]
    path = [dest]
    while path[-1] != hop:
        path.append(prev[path[-1]])
    return [me, *reversed(path)]


def render_graph(topo: Topology, me: str | None, path: Sequence[str] = ()) -> Text:
    """The arc diagram of ``topo``; the links and nodes of ``path`` in bold yellow."""
    order = node_order(topo, me)
    row = {nid: i for i, nid in enumerate(order)}
    on_path = {frozenset(p) for p in itertools.pairwise(path)}
    links = []
    for ln in topo.links:
        ra, rb = sorted((row[ln.a], row[ln.b]))
        links.append((ra, rb, fmt_num(ln.cost, 0), frozenset((ln.a, ln.b)) in on_path))
    # lanes: the shortest links nearest the labels; a lane holds links whose rows do not meet
    links.sort(key=lambda x: (x[1] - x[0], x[0]))
    lanes: list[list[tuple[int, int, str, bool]]] = []
    for link in links:
        for lane in lanes:
            if all(link[1] < o[0] or o[1] < link[0] for o in lane):
                lane.append(link)
                break
        else:
            lanes.append([link])
    lw = max([3, *(len(c) + 1 for _, _, c, _ in links)])
    width = len(lanes) * lw + 1
    height = max(1, 2 * len(order) - 1)
    grid = [[" "] * width for _ in range(height)]
    style = [[""] * width for _ in range(height)]

    def put(y: int, x: int, ch: str, st: str) -> None:
        grid[y][x] = _MERGE.get((grid[y][x], ch), ch)
        style[y][x] = st

    # draw the path's links last, so that they stay on top where lanes cross
    ordered = sorted(((k, ln) for k, lane in enumerate(lanes) for ln in lane),
                     key=lambda kl: kl[1][3])
    for k, (ra, rb, cost, hot) in ordered:
        st = _PATH if hot else _LINK
        x0 = (len(lanes) - 1 - k) * lw
        bx = x0 + (lw - 1) // 2
        for y in range(2 * ra + 1, 2 * rb):
            put(y, bx, "│", st)
        mid = ra + rb if (ra + rb) % 2 else ra + rb - 1
        for i, ch in enumerate(cost[: lw - 1]):
            put(mid, x0 + i, ch, st)
        for y, corner in ((2 * ra, "╭"), (2 * rb, "╰")):
            put(y, bx, corner, st)
            for x in range(bx + 1, width):
                put(y, x, "─", st)
    out = Text(no_wrap=True)
    hot_nodes = set(path)
    for y in range(height):
        for x in range(width):
            out.append(grid[y][x], style=style[y][x])
        if y % 2 == 0:
            nid = order[y // 2]
            role = next((n.role for n in topo.nodes if n.node_id == nid), "")
            name_style = _PATH if nid in hot_nodes else "bold cyan" if nid == me else "bold"
            out.append(" " + clean(topo.name_of(nid)), style=name_style)
            out.append(f" {nid[:8]}" + (f" {clean(role)}" if role else ""), style="dim")
            if nid == me:
                out.append("  (this node)", style="cyan")
        out.append("\n")
    return out


class TopologyView(View):
    """The mesh as a graph beside the routes; the selected route's path is drawn in bold."""

    KEY: ClassVar[str] = "t"
    TITLE: ClassVar[str] = "Topology"
    SHORT: ClassVar[str] = "Topo"
    METHODS: ClassVar[tuple[str, ...]] = ("topology",)
    ACTIONS: ClassVar[tuple[tuple[str, str], ...]] = (("↑↓", "route to highlight"),)

    DEFAULT_CSS = """
    TopologyView Horizontal { height: 1fr; }
    TopologyView #topo-graph-box { width: 1fr; min-width: 30; }
    TopologyView #topo-routes-box { width: 31; border-left: solid $primary; }
    TopologyView #topo-routes { height: 1fr; }
    TopologyView #topo-graph { width: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield Static(classes="heading", id="topo-title")
        with Horizontal():
            with ScrollableContainer(id="topo-graph-box"):
                yield Static(id="topo-graph")
            with Vertical(id="topo-routes-box"):
                yield Static("Routes (select one)", classes="heading")
                yield DataTable(cursor_type="row", id="topo-routes")

    def _selected(self, model: MeshModel) -> Route | None:
        table = self.query_one("#topo-routes", DataTable)
        if not table.row_count or not 0 <= table.cursor_row < table.row_count:
            return None
        key = list(table.rows)[table.cursor_row].value
        return next((r for r in model.routes if r.destination == key), None)

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        topo = model.effective_topology()
        me = str(model.status.get("node_id")) if model.status else None
        extra = ""
        if topo is not None and not topo.complete:
            extra = "showing this node's own links only"
        rows = []
        for r in model.routes:
            if not r.reachable:
                continue
            name = r.name or model.name_of(r.destination)
            hop = r.next_hop_name or model.name_of(r.next_hop)
            if matches(needle, name, r.destination, hop, r.next_hop):
                rows.append((r.destination, self.cells(name, hop, fmt_num(r.metric, 0))))
        self.set_notice(model, "\n".join(t for t in (
            extra, self.filter_note(needle, len(rows), len(model.routes))) if t))
        table = self.query_one("#topo-routes", DataTable)
        fill_table(table, [Column("TO", squeeze=True, min=6), Column("VIA", squeeze=True, min=6),
                           Column("METRIC")], rows, width=28)
        if topo is None:
            self.query_one("#topo-title", Static).update("no topology yet")
            self.query_one("#topo-graph", Static).update("")
            return
        route = self._selected(model)
        path = route_path(topo, me, route) if route is not None and me is not None else []
        title = Text(f"{len(topo.nodes)} nodes, {len(topo.links)} links, cost on each "
                     "(lower is better)")
        if route is not None:
            names = " → ".join(clean(topo.name_of(n)) for n in path) or "unknown"
            title.append(f"\nroute to {clean(topo.name_of(route.destination))}: ", style="bold")
            title.append(names, style=_PATH)
            title.append(f" (metric {fmt_num(route.metric, 0)})")
        self.query_one("#topo-title", Static).update(title)
        self.query_one("#topo-graph", Static).update(render_graph(topo, me, path))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        refresh = getattr(self.app, "refresh_view", None)
        if callable(refresh):
            refresh()
