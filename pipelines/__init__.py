"""imagerec core: image intake, models, the log. No UI here."""
