"""Training and evaluation on an image folder: data and splits, augmentation, fitting, metrics and model cards."""
