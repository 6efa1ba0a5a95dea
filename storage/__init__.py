"""The Zarr store of a sweep: layout, block writes, the completion ledger, lease, verify."""
