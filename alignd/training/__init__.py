"""Trainers for reward heads, value heads and preference vectors (DESIGN.md section 8)."""
