"""Applications of datamodels: counterfactuals, brittleness, neighbours, leakage, embeddings, report."""
