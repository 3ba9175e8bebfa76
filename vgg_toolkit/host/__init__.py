"""The plugin host: loads plugins through the ``vggtk`` entry-point group and builds the registries
their ``vggtk_register_*`` hooks fill."""
