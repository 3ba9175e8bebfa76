"""vggtk's built-in plugins. Each is loaded through the ``vggtk`` entry-point group like any
third-party plugin; modules named ``*_net`` hold the networks the plugins register."""
