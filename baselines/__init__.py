"""Baseline self-supervised methods, one module each, registered into alice.ssl's registry.

Empty until the baseline issues land.
"""
