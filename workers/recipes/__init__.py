"""Built-in recipes (see workers.recipe.BUILTIN_RECIPES for their names)."""
