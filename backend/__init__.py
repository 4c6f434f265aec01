"""SAE Explorer backend: models, corpora, activations, SAEs, index, steering."""
