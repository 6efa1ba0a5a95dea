"""Create a sweep's store from its spec, or check that an existing one matches it."""

from __future__ import annotations

import numpy as np

from storage.errors import InputError, StoreMismatchError
from storage.location import store_location
from storage.npy_rows import open_npy
from storage.metadata import sweep_metadata
from storage.spec import SweepSpec, spec_differences
from storage.sweep_store import StoreProbe, SweepStore, probe_store
from workers.recipe import build_recipe

__all__ = ["stored_spec", "create_store", "check_store_matches", "open_store_for_spec", "check_masks_file"]


def stored_spec(store: SweepStore) -> SweepSpec:
    """The spec a sweep store was created from; InputError for an imported store."""
    spec = store.spec
    if spec is None:
        provenance = store.metadata.provenance  # type: ignore[union-attr]
        raise InputError(
            f"{str(store.path)!r} is an imported store (source: {provenance.source}); it has no sweep spec, "
            "so nothing can be trained into it",
            params=("store",),
        )
    return spec


def check_masks_file(path: str, *, num_models: int, n_train: int) -> None:
    """An explicit masks file must be a bool .npy of shape [num_models, n_train]."""
    try:
        masks = open_npy(path, param="masks_file")
    except InputError as exc:
        raise InputError(f"masks_file {path!r} is not a readable .npy file ({exc})", params=("masks_file",)) from None
    if masks.dtype != np.bool_ or masks.shape != (num_models, n_train):
        raise InputError(
            f"masks_file {path!r} must be bool [{num_models}, {n_train}] (num_models x N_train); "
            f"it is {masks.dtype} {list(masks.shape)}",
            params=("masks_file",),
        )


def create_store(spec: SweepSpec) -> SweepStore:
    """Create the store at ``spec.store``; the recipe is asked for its dataset's sizes first."""
    recipe = build_recipe(spec.recipe.name, spec.recipe.params)
    missing = [name for name in spec.outputs.names() if name not in recipe.supported_outputs]
    if missing:
        raise InputError(
            f"recipe {spec.recipe.name!r} cannot record {missing}; it supports {sorted(recipe.supported_outputs)}",
            params=("outputs",),
        )
    dataset = recipe.dataset_info()
    if spec.masks_file is not None:
        check_masks_file(spec.masks_file, num_models=spec.num_models, n_train=dataset.n_train)
    return SweepStore.create(spec.store, sweep_metadata(spec, dataset=dataset))


def check_store_matches(store: SweepStore, spec: SweepSpec) -> None:
    """Refuse a spec whose identity fields differ from the stored one.

    ``num_models`` is not compared: a spec's is the least the sweep should
    have. A larger one grows the store; a smaller one (the spec as written
    before ``dmsweep extend``) runs the store as it is, never shrinking it.
    """
    differences = spec_differences(stored_spec(store), spec)
    if differences:
        raise StoreMismatchError(
            f"store {str(store.path)!r} was made from a different spec ({'; '.join(differences)}); "
            "use a new store path, or the stored spec"
        )


def open_store_for_spec(spec: SweepSpec, *, create: bool = True) -> tuple[SweepStore, bool]:
    """Open the spec's store, creating it if absent; returns (store, created).

    An existing store must have been made from the same spec (identity
    fields). Growing it to a larger ``num_models`` is the driver's job, under
    its lease.
    """
    location = store_location(spec.store)
    if probe_store(location) is not StoreProbe.STORE:
        if not create:
            raise InputError(f"no store at {location.uri!r}", params=("store",))
        return create_store(spec), True  # refuses a path that holds something else
    store = SweepStore.open(location, mode="r+")
    check_store_matches(store, spec)
    return store, False
