"""featup_plugin.hub and the repository's hubconf.py."""
