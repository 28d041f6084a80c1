"""closewait-report: merge closewait JSON Lines logs into one report for a ticket.

Reads the `leak`, `closed_late` and `summary` events written by libclosewait
(CLOSEWAIT_FORMAT=json, see docs/CONTRACT.md) from any number of logs (many pids,
rotated and compressed files, several hosts, `-` for stdin), merges the leaks by the
stack that opened the socket, symbolizes frames that carry only module+offset, and
writes a Markdown, JSON or text report.  See docs/report.md.

Python 3 standard library only.
"""

from .constants import *  # noqa: F401,F403
from .values import *  # noqa: F401,F403
from .collect import *  # noqa: F401,F403
from .merge import *  # noqa: F401,F403
from .elf import *  # noqa: F401,F403
from .symbolize import *  # noqa: F401,F403
from .suppress import *  # noqa: F401,F403
from .report import *  # noqa: F401,F403
from .render import *  # noqa: F401,F403
from .cli import *  # noqa: F401,F403
from .values import _UNSAFE_CHARS  # noqa: F401
from .collect import _reject_constant  # noqa: F401
from .elf import _parse_notes, _usable_file  # noqa: F401
from .symbolize import _LOC, _NAME_PREFIXES  # noqa: F401
