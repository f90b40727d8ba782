"""How sandboxes are obtained: the factory (pool claim, template clone, cold boot) and warm pools."""
