"""Network code of the built-in method adapters (torch, timm), imported when an adapter builds its network."""
