"""Hydra YAML of magpo, installed as ``benchmarl_ext.conf`` (a package so Hydra's ``pkg://`` finds it)."""
