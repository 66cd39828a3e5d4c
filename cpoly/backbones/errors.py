"""The backbone group's error (a leaf module: the schema, the recipe and the loaders all raise it)."""


class BackboneConfigError(ValueError):
    """An invalid `BackboneConfig` value; the message names the field and the value."""
