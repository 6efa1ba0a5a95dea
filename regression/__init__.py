"""Datamodel regression: the streaming loader, the SAGA LASSO path solver, LDS."""
