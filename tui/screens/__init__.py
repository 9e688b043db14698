"""The console's views, one per screen, each fed by ``tui.model.MeshModel``."""

from tui.screens.base import View
from tui.screens.board import BoardView
from tui.screens.calls import CallsView
from tui.screens.forms import ConfirmScreen, Field, FormScreen
from tui.screens.help import HelpScreen
from tui.screens.library import LibraryView
from tui.screens.logpane import LogView
from tui.screens.messages import MailView, MessagesView
from tui.screens.neighbours import NeighboursView
from tui.screens.overview import OverviewView
from tui.screens.routes import RoutesView
from tui.screens.sync import SyncView
from tui.screens.topology import TopologyView

__all__ = [
    "BoardView",
    "CallsView",
    "ConfirmScreen",
    "Field",
    "FormScreen",
    "HelpScreen",
    "LibraryView",
    "LogView",
    "MailView",
    "MessagesView",
    "NeighboursView",
    "OverviewView",
    "RoutesView",
    "SyncView",
    "TopologyView",
    "View",
]
