"""nanodist: a Hydra-composed harness for distributed GPT training on one DeviceMesh.

Layers, lowest first; a module imports only from its own layer or lower ones (tests/test_layers.py):
config -> data -> model -> parallel -> train -> tools -> launch.
"""
