"""``python -m carmesh.meshctl``: the same as the ``meshctl`` command."""

import sys

from carmesh.meshctl import main

sys.exit(main())
