# Runtime shared by the project's configs: mmseg's defaults plus the plugin's modules.
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['featup_plugin'], allow_failed_imports=False)
