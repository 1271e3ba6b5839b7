"""vitssl's built-in plugins, registered through the ``vitssl`` entry-point group."""
