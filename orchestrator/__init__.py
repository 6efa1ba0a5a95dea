"""The sweep spec, the dmsweep CLI and the Ray driver."""
