"""Distillation methods: the contract (:mod:`.base`), the registry, and one module per method."""
