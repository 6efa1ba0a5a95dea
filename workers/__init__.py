"""Everything that runs on a worker: recipes, deterministic masks, batched training."""
