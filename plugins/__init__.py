"""vggtk's built-in plugins, one package each. Every one loads through the ``vggtk`` entry-point group
like a third-party plugin: its ``__init__`` holds the hook implementations, its modules what they register."""
