"""Tasks run on one photo: each a preprocess -> _forward -> postprocess with a plain-dict output."""
