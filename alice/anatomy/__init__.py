"""anatomy."""
