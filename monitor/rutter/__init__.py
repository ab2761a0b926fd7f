"""Rutter's edges: the API client and the webhook signature scheme."""
