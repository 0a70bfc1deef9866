"""Plugins bundled with kernel-sse, installed as the package ``kernel_sse_plugins``.

Each bundled plugin lives in a module of its own here and is registered by
``kernel_sse`` itself, like any other plugin. The source folder
is ``plugins/``; ``setup.cfg`` maps it to the import name ``kernel_sse_plugins``
so that nothing named ``plugins`` lands in site-packages.
"""
