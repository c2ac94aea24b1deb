"""featup_plugin's tests, one folder per package of featup_plugin (``tests/ops`` for ``featup_plugin.ops``, ...)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository (configs/, tools/)
