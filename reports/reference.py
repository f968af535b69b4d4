"""The paper's published figures (``paper_reference.json``, made from the paper and its release).

Only figures the paper publishes are here; a method without a published number renders as "n/a".
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

REFERENCE_PATH = Path(__file__).with_name("paper_reference.json")


@lru_cache(maxsize=1)
def paper_reference() -> dict[str, Any]:
    """The whole published-figures document (Tables 1-6, 2, 3, 8, 9 as JSON)."""
    return json.loads(REFERENCE_PATH.read_text())
