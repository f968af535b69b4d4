"""The paper's published figures (``paper_reference.json``, made from the paper and its release).

Only figures the paper publishes are here; a method without a published number renders as "n/a".
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=1)
def paper_reference() -> dict[str, Any]:
    """The whole published-figures document (Tables 1-6, 2, 3, 8, 9 as JSON)."""
    text = resources.files("reports").joinpath("paper_reference.json").read_text()
    return json.loads(text)
