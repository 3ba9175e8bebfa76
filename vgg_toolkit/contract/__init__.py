"""The typed objects that cross the plugin boundary: scales, model info and capabilities, data facts,
task heads, plugin-declared options. The hooks in ``hookspecs`` are written in these terms."""
