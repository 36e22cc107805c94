"""Trainers for reward heads, value heads and preference vectors."""
