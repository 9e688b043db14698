"""Topology: the mesh as this node knows it, nodes and links with their cost."""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from tui.model import MeshModel, Topology
from tui.screens.base import View, fmt_num, matches

__all__ = ["TopologyView", "render_links", "render_tree"]


def _label(topo: Topology, node_id: str, me: str | None) -> Text:
    role = next((n.role for n in topo.nodes if n.node_id == node_id), "")
    t = Text(topo.name_of(node_id), style="bold cyan" if node_id == me else "bold")
    t.append(f" {node_id[:8]}" + (f" {role}" if role else ""), style="dim")
    return t


def _walk(out: Text, topo: Topology, me: str | None, children: dict[str, list[str]],
          parent: dict[str, tuple[str, float | None]], x: str, prefix: str) -> None:
    kids = children.get(x, [])
    for i, y in enumerate(kids):
        last = i == len(kids) - 1
        out.append(prefix + ("└─" if last else "├─"), style="dim")
        out.append(fmt_num(parent[y][1], 0), style="yellow")
        out.append("─ ", style="dim")
        out.append_text(_label(topo, y, me))
        out.append("\n")
        _walk(out, topo, me, children, parent, y, prefix + ("   " if last else "│  "))


def render_tree(topo: Topology, me: str | None) -> Text:
    """A shortest-hop spanning tree from ``me``; nodes it cannot reach listed after it."""
    adj = topo.adjacency()
    out = Text()
    seen: set[str] = set()
    roots = ([me] if me in adj else []) + sorted(adj, key=lambda x: (topo.name_of(x), x))
    for root in roots:
        if root in seen:
            continue
        if seen:
            out.append("\n")
        seen.add(root)
        out.append_text(_label(topo, root, me))
        if root == me:
            out.append("  (this node)", style="cyan")
        out.append("\n")
        # breadth first, so each node hangs under the neighbour that reaches it in fewest hops
        parent: dict[str, tuple[str, float | None]] = {}
        order: list[str] = []
        q = deque([root])
        while q:
            x = q.popleft()
            for y, cost in adj.get(x, []):
                if y not in seen:
                    seen.add(y)
                    parent[y] = (x, cost)
                    order.append(y)
                    q.append(y)
        children: dict[str, list[str]] = {}
        for y in order:
            children.setdefault(parent[y][0], []).append(y)

        _walk(out, topo, me, children, parent, root, "")
    return out


def render_links(topo: Topology, me: str | None, needle: str = "") -> Text:
    """Every link, one a line: ``name ─[cost]─ name``, cheapest first."""
    out = Text()
    links = sorted(topo.links, key=lambda ln: (ln.cost if ln.cost is not None else float("inf"),
                                               topo.name_of(ln.a), topo.name_of(ln.b)))
    for ln in links:
        a, b = topo.name_of(ln.a), topo.name_of(ln.b)
        if not matches(needle, a, b, ln.a, ln.b):
            continue
        if ln.b == me:  # this node on the left
            a, b = b, a
        out.append(a, style="bold cyan" if me in (ln.a, ln.b) and a == topo.name_of(me or "")
                   else "bold")
        out.append(" ─[", style="dim")
        out.append(fmt_num(ln.cost, 0), style="yellow")
        out.append("]─ ", style="dim")
        out.append(b, style="bold")
        out.append("\n")
    return out


class TopologyView(View):
    """A spanning tree of the mesh from this node, and the list of every link with its cost."""

    KEY: ClassVar[str] = "t"
    TITLE: ClassVar[str] = "Topology"
    SHORT: ClassVar[str] = "Topo"
    METHODS: ClassVar[tuple[str, ...]] = ("topology",)

    DEFAULT_CSS = """
    TopologyView Horizontal { height: 1fr; }
    TopologyView #topo-tree-box { width: 2fr; min-width: 30; }
    TopologyView #topo-links-box { width: 1fr; min-width: 24; border-left: solid $primary; }
    """

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield Static(classes="heading", id="topo-title")
        with Horizontal():
            with VerticalScroll(id="topo-tree-box"):
                yield Static(id="topo-tree")
            with VerticalScroll(id="topo-links-box"):
                yield Static(id="topo-links")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        topo = model.effective_topology()
        me = str(model.status.get("node_id")) if model.status else None
        extra = ""
        if topo is not None and not topo.complete:
            extra = "showing this node's own links only"
        self.set_notice(model, extra)
        if topo is None:
            self.query_one("#topo-title", Static).update("no topology yet")
            self.query_one("#topo-tree", Static).update("")
            self.query_one("#topo-links", Static).update("")
            return
        self.query_one("#topo-title", Static).update(
            f"{len(topo.nodes)} nodes, {len(topo.links)} links (cost: lower is better)")
        self.query_one("#topo-tree", Static).update(render_tree(topo, me))
        links = Text("Links\n", style="bold")
        links.append_text(render_links(topo, me, needle))
        self.query_one("#topo-links", Static).update(links)
