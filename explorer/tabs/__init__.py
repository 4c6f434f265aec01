"""One module per tab; each exposes ``build(backend, sae_names, ...)`` and module-level handlers."""
