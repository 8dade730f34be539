"""Authentication: users, credential checkers and the realm."""
