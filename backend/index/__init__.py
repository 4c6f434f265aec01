"""The feature index: build, store (all SQL), labels, concepts, maps."""
