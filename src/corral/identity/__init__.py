"""Identity: orgs, teams, users, service accounts and their keys."""

from corral.identity.keys import KeyCache, KeyInfo, hash_key, mint_key

__all__ = ["KeyCache", "KeyInfo", "hash_key", "mint_key"]
