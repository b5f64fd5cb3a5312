"""Renders the reports people read (performance report, model card, README results) from the files the commands
write. Facts come from configs, metrics and the machine; the prose lives in `templates/`."""
