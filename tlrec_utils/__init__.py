"""TLRec: transfer learning from a source domain to make open LLMs better sequential recommenders.

Every entry script at the repository root is a thin wrapper around this package: one concern a module.
Importing the package is cheap (no torch); heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
