"""Importers: models from other frameworks into qexact graphs. None imports its framework at
module level; ``qexact.from_torch`` imports torch only when called. Each module registers its
handlers when imported (``_handlers``: the tables, and their discovery of this package's
modules), so a new handler module needs no list edit."""
