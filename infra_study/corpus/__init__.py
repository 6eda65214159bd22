"""The generated math + code chain-of-thought corpus (data/DATASHEET.md), its splits and grading.

``core.py`` holds the configuration, the splits, building and caching, the ablation's
``strip_exploratory``, grading and statistics; ``v1.py`` the round-1 generator (frozen, so round 1
stays reproducible) and ``v2.py`` with ``pools.py`` the round-2 generator; ``stats.py`` the
round-2 corpus statistics. ``CorpusConfig.version`` chooses the generator.
"""
from .core import *  # noqa: F401,F403
from .core import __all__  # noqa: F401
