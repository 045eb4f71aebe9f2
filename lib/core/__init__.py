"""What every other package uses: ``InputError``, atomic writes, the project's layout, the names of steps
and model rows."""
