"""Built-in plugins. Each is declared under the ``kdlab.plugins`` entry-point group in
pyproject.toml, exactly as a third-party package would declare its own."""
