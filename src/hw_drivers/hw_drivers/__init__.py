"""hw_drivers."""
