"""Network code of the built-in segmenters (torch, timm), imported when a segmenter builds its network."""
