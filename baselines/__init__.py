"""Baseline self-supervised methods, one module each, discovered by alice.ssl.catalog (a module
with a literal `METHOD` declaration is a method; nothing to import or register elsewhere)."""
