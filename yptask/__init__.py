"""yptask: a supervised task cluster.

Web apps publish named messages; every task subscribed to a name gets the
message and one of its worker processes handles it. This package's top level
stays light: a worker process imports it, so it pulls in only the standard
library and yptask's protocol modules.
"""

from __future__ import annotations

import logging

from yptask.errors import YPTaskError
from yptask.tasks.base import BaseTask, handles

__version__ = "0.1.0"
__all__ = ["BaseTask", "YPTaskError", "__version__", "handles"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
