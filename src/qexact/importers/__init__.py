"""Importers: models from other frameworks into qexact graphs. None imports its framework at
module level; ``qexact.from_torch`` imports torch only when called."""
