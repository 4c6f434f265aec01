"""Model kinds beyond plain text: protein and recommender windows, concepts, outcome steering."""
