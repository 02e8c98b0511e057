"""The markdown links to a document's images and tables: `![alt](target)` and `[alt](target)`.

The service writes them; the merge renames their targets when chunks are numbered into one
document, and the store points them at the files it writes. One pattern for both.
"""

from __future__ import annotations

import re
from collections.abc import Callable

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")  # groups: bang, alt, target


def rewrite_links(text: str, sub: Callable[[re.Match[str]], str]) -> str:
    """`text` with each link replaced by `sub(match)`. Most page text has no link at all, and
    the check for one costs far less than the pattern's search."""
    return LINK.sub(sub, text) if "](" in text else text
